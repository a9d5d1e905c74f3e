# The Chef server API down, hung, failing or talking nonsense: every
# request that needs it answers 502 or 504 within pushjobs_chef_timeout
# (plus a margin for a loaded machine) with a JSON error that says the Chef
# server could not be asked -- never 401 or 403; what needs only a cached
# key keeps working: agents keep their channels, an agent whose key is
# cached connects again, config/NODE answers; a job that was running ends;
# once the Chef API is back everything answers as before.  A key past its
# ttl is used for `stale` more seconds, only while the Chef server cannot
# be asked.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes ();
use PushJobs::Stack;
use PushJobs::Fault qw(check_invariants timed worker_pids);

my $TIMEOUT = 2;        # pushjobs_chef_timeout
my $MARGIN = 3;         # seconds a loaded machine may add

my $stack = PushJobs::Stack->new(
    agents => 3,
    nginx_extra => "    pushjobs_chef_timeout ${TIMEOUT}s;\n",
);
$stack->start;

my $org = $stack->org;
my $jobs = "/organizations/$org/pushy/jobs";
my @ids;

sub presence {
    my %p;
    # a session number is per worker: with its owner, per channel
    for (split /\n/, $stack->psql('pushjobs', "SELECT node_name, owner"
            . " || ':' || session, online FROM pushjobs.presence"
            . " WHERE org = '$org'")) {
        my ($n, $session, $online) = split /\t/;
        $p{$n} = $online eq 't' ? $session : undef;
    }
    return \%p;
}

sub job_status {
    my ($id) = @_;
    my $s = $stack->psql('pushjobs',
                         "SELECT status FROM pushjobs.jobs WHERE id = '$id'");
    chomp $s;
    return $s;
}

# keys cached by a first request: alice (admin), node1 (its agent and a
# config request); each outage below also has a principal that has never
# asked anything, whose key is not cached: bob (a member), ghost (a client
# without an agent), carol (not in the org), dave (of another org),
# othernode (a client of another org), and what it gets once the Chef API
# is back
is $stack->request('GET', $jobs, user => 'alice')->{status}, 200,
    'alice reads the jobs (her key is now cached)';
is $stack->request('GET', "/organizations/$org/pushy/config/node1",
                   user => 'node1')->{status}, 200,
    'node1 reads its config';

# node2 talks long-poll: every poll and every report is a signed request
# of its own, each needing its key while the Chef API is out
$stack->stop_agent('node2');
PushJobs::Stack::wait_for(10, sub { !defined presence()->{node2} });
$stack->start_agent('node2', args => ['--long-poll']);
ok PushJobs::Stack::wait_for(20, sub { defined presence()->{node2} }),
    'node2 is back, over long-poll';

# node3 goes away cleanly: it comes back during each outage, with its key
# from the cache
$stack->stop_agent('node3');
ok PushJobs::Stack::wait_for(10, sub { !defined presence()->{node3} }),
    'node3 is offline';

my %expect = (
    down    => [ 502, qr/^status 502$/, bob => 200 ],
    hang    => [ 504, qr/^timed out$/, ghost => 200 ],
    error   => [ 502, qr/^status 500$/, carol => 403 ],
    garbage => [ 502, qr/^unusable answer$/, dave => 403 ],
    notfound => [ 502, qr/^unusable answer$/, othernode => 401 ],
);

for my $mode (qw(down hang error garbage notfound)) {
    my ($status, $reason, $uncached, $after) = @{ $expect{$mode} };

    # a job that runs through the outage
    my $running = $stack->start_job({ command => 'sleep 2',
                                      nodes => [ 'node1', 'node2' ] },
                                    user => 'alice');
    push @ids, $running;
    ok PushJobs::Stack::wait_for(10,
           sub { job_status($running) eq 'running' }, 0.1),
        "$mode: a job is running";

    my $before = presence();

    $stack->chef_fault($mode);

    my @who = (
        [ 'alice', 'GET', "group 'pushy_job_readers'", 'cached key' ],
        [ $uncached, 'GET', 'key', 'uncached key' ],
        [ 'alice', 'POST', "group 'pushy_job_writers'", 'a write' ],
    );

    for my $w (@who) {
        my ($user, $method, $what, $name) = @$w;
        my ($took, $res) = timed(sub {
            $stack->request($method, $jobs, user => $user,
                            ($method eq 'POST'
                             ? (body => { command => 'true',
                                          nodes => ['node1'] })
                             : ()));
        });
        is $res->{status}, $status, "$mode: $method jobs as $user ($name): "
            . "$status" or diag $res->{content};
        like $res->{json}{error}[0] // '',
            qr/^Failed to connect to erchef to get \Q$what\E: /,
            "$mode:   the error says the Chef server could not be asked"
            or diag $res->{content};
        my ($got) = ($res->{json}{error}[0] // '') =~ /: ([^:]*)$/;
        like $got // '', $reason, "$mode:   and why";
        cmp_ok $took, '<=', $TIMEOUT + $MARGIN,
            sprintf("$mode:   within the bound (%.2f s)", $took);
        cmp_ok $took, '>=', $TIMEOUT - 0.5,
            sprintf("$mode:   after the whole timeout (%.2f s)", $took)
            if $mode eq 'hang';
    }

    # what needs only the (cached) key
    my $res = $stack->request('GET', "/organizations/$org/pushy/config/node1",
                              user => 'node1');
    is $res->{status}, 200, "$mode: node1 reads its config (cached key)"
        or diag $res->{content};

    $stack->start_agent('node3');
    ok PushJobs::Stack::wait_for(20, sub { defined presence()->{node3} }),
        "$mode: node3 connects again with its cached key";

    ok PushJobs::Stack::wait_for(20, sub {
           job_status($running) =~ /^(complete|quorum_failed|timed_out|crashed|aborted)$/
       }, 0.2), "$mode: the running job ends";
    is job_status($running), 'complete', "$mode:   complete";

    my $now = presence();
    is_deeply [ map { $now->{$_} } qw(node1 node2) ],
              [ map { $before->{$_} } qw(node1 node2) ],
        "$mode: node1 and node2 (long-poll) kept their channels";

    $stack->chef_fault('ok');

    is $stack->request('GET', $jobs, user => 'alice')->{status}, 200,
        "$mode, then ok: alice reads the jobs";
    is $stack->request('GET', $jobs, user => $uncached)->{status}, $after,
        "$mode, then ok: $uncached gets $after as before";
    push @ids, $stack->start_job({ command => 'true', nodes => ['node1'] },
                                 user => 'alice');
    my $job = $stack->wait_job($ids[-1], 30);
    is $job && $job->{status}, 'complete', "$mode, then ok: a new job runs";

    $stack->stop_agent('node3');
    PushJobs::Stack::wait_for(10, sub { !defined presence()->{node3} });
}

# The Chef API hung when nginx reloads.  The old worker that waits on it
# for a request's group stays until pushjobs_chef_timeout and answers 504;
# if the Chef API answers first, the request goes on to PostgreSQL, which
# the exiting worker still waits for: 200.  Either way the worker then
# exits with nothing left open (no [alert] "open socket left in
# connection", its upstream connection to the Chef API included).
my $chef_log = "$stack->{dir}/chef/access.log";
my $hung = sub { scalar(() = PushJobs::Stack::slurp($chef_log) =~ /FAULT hang/g) };

for my $late (1, 0) {
    my $what = $late ? 'hang at reload' : 'hang at reload, answered in time';
    my $before = $hung->();
    my @old = worker_pids($stack);
    $stack->chef_fault('hang');
    my $req = $stack->request_async('GET', $jobs, user => 'alice');
    ok PushJobs::Stack::wait_for(10, sub { $hung->() > $before }, 0.05),
        "$what: a request waits on the Chef API";
    my $off = length $stack->error_log;
    kill 'HUP', $stack->{procs}{'nginx:fe1'};
    if (!$late) {
        ok PushJobs::Stack::wait_for(5, sub {
            () = substr($stack->error_log, $off) =~ /gracefully shutting down/g;
        }, 0.05), "$what: the old workers are shutting down";
        $stack->chef_fault('ok');
    }
    my $res = $req->result($TIMEOUT + $MARGIN + 5);
    if ($late) {
        is $res && $res->{status}, 504, "$what: 504" or diag explain $res;
        like $res && $res->{json}{error}[0] // '',
            qr/^Failed to connect to erchef to get group '[^']+': timed out$/,
            '  the Chef server did not answer in time';
        cmp_ok $res ? $res->{took} : 99, '<=', $TIMEOUT + $MARGIN,
            sprintf('  within the bound (%.2f s)', $res ? $res->{took} : -1);
        $stack->chef_fault('ok');
    } else {
        is $res && $res->{status}, 200, "$what: 200" or diag explain $res;
    }
    ok PushJobs::Stack::wait_for(10, sub {
        my %old = map { $_ => 1 } @old;
        my @w = worker_pids($stack);
        @w == 2 && !grep { $old{$_} } @w;
    }, 0.1), '  the old workers exited';
    is_deeply [ grep { /\[(alert|crit|emerg)\]/ }
                split /\n/, substr($stack->error_log, $off) ], [],
        '  no [alert] (open socket left)';
    is $stack->request('GET', $jobs, user => 'alice')->{status}, 200,
        "$what, then ok: alice reads the jobs";
}

is_deeply [ check_invariants($stack, \@ids) ], [],
    'every job final, each result recorded once, no alert in the log';

$stack->stop;

# --- stale-if-error ---------------------------------------------------------
#
# ttl=2s stale=20s: a key fetched at t0 or up to 2 s before is past its ttl
# at t0 + 2.5 s, used while the Chef server cannot be asked until at least
# t0 + 20 s, and gone at t0 + 22 s.  These waits are on the cache's clock
# itself.

my $s2 = PushJobs::Stack->new(
    agents => 1,
    key_zone => 'ttl=2s stale=20s',
    nginx_extra => "    pushjobs_chef_timeout ${TIMEOUT}s;\n",
);
$s2->start;

my $config = "/organizations/$org/pushy/config/node1";
my $t0 = Time::HiRes::time();
is $s2->request('GET', $jobs, user => 'alice')->{status}, 200,
    'stale: alice reads the jobs';
is $s2->request('GET', $config, user => 'node1')->{status}, 200,
    'stale: node1 reads its config';

PushJobs::Stack::wait_for(5, sub { Time::HiRes::time() >= $t0 + 2.5 });
$s2->chef_fault('down');

my $res = $s2->request('GET', $config, user => 'node1');
is $res->{status}, 200, 'down, past the ttl: node1 reads its config with '
    . 'its stale key' or diag $res->{content};
like $s2->error_log, qr/the Chef server cannot be asked, the key of "node1" of "$org" cached \d+ s ago is used/,
    '  and the error log says so';

$res = $s2->request('GET', $jobs, user => 'alice');
is $res->{status}, 502, 'down, past the ttl: alice verified with her stale '
    . 'key, then 502 for the group';
like $res->{json}{error}[0] // '', qr/to get group 'pushy_job_readers'/,
    '  (the group, not the key)' or diag $res->{content};

$res = $s2->request('GET', $jobs, user => 'alice',
                    key_file => $s2->{users}{bob}{key});
is $res->{status}, 502, 'down: a signature the stale key does not verify '
    . 'is 502 (the key may have been rotated), not 401';
like $res->{json}{error}[0] // '', qr/^Failed to connect to erchef to get key: /,
    '  about the key' or diag $res->{content};

my $session = sub {
    my $v = $s2->psql('pushjobs', "SELECT owner || ':' || session FROM"
                      . " pushjobs.presence WHERE node_name = 'node1'"
                      . " AND online");
    chomp $v;
    return $v;
};
my $was = $session->();
$s2->stop_agent('node1', 'KILL');
$s2->start_agent('node1');
ok PushJobs::Stack::wait_for(10, sub {
       my $now = $session->();
       length $now && $now ne $was;
   }), 'down: the node1 agent, restarted, connects with its stale key';

cmp_ok Time::HiRes::time(), '<', $t0 + 20, '  (all of it within the stale '
    . 'window)';

PushJobs::Stack::wait_for(30, sub { Time::HiRes::time() >= $t0 + 22.5 });

$res = $s2->request('GET', $config, user => 'node1');
is $res->{status}, 502, 'down, past ttl + stale: 502' or diag $res->{content};
like $res->{json}{error}[0] // '', qr/^Failed to connect to erchef to get key: /,
    '  about the key';

$s2->chef_fault('ok');
is $s2->request('GET', $config, user => 'node1')->{status}, 200,
    'ok: node1 reads its config';
is $s2->request('GET', $jobs, user => 'alice')->{status}, 200,
    'ok: alice reads the jobs';

is_deeply [ check_invariants($s2, []) ], [], 'no alert in the log';

$s2->stop;
done_testing;
