# nginx -s reload (SIGHUP to the master) mid-job, with a job feed and the
# org feed open: the old workers end their feeds and channels and exit,
# the readers reconnect with Last-Event-ID and receive every event exactly
# once, in order (compared with job_events and org_events), the agents
# move to the new workers, the job completes with each result recorded
# once, and nginx logs no [alert], [crit] or worker death.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use PushJobs::Stack;
use PushJobs::Fault qw(check_invariants timed worker_pids wait_reconnected);
use PushJobs::WS;
use PushJobs::Engine;

my $s = PushJobs::Stack->new(agents => 3, workers => 2,
    nginx_extra => 'pushjobs_node_lost_timeout 20s; '
                   . 'pushjobs_sweep_interval 200ms; '
                   . 'pushjobs_feed_linger 30s;');
$s->start;

my $org = $s->org;
my $base = "/organizations/$org/pushy";
my @nodes = $s->agent_names;
my $master = $s->{procs}{'nginx:fe1'};
PushJobs::Engine->init($s);
my @ids;

sub db_list {
    my ($sql) = @_;
    return [ split /\n/, $s->psql('pushjobs', $sql) ];
}

sub org_ids { [ map { $_->{id} } grep { $_->{id} } $_[0]->events ] }

# Reloads nginx mid-job; returns the new worker pids.
sub reload {
    my ($what) = @_;
    my @old = worker_pids($s);
    my $offset = length $s->error_log;
    my ($t) = timed(sub { kill 'HUP', $master });
    my @new;
    ok PushJobs::Stack::wait_for(30, sub {
        my %old = map { $_ => 1 } @old;
        @new = worker_pids($s);
        return @new == 2 && !grep { $old{$_} } @new;
    }, 0.1), "$what: reloaded, the old workers (@old) exited, new ones "
             . "(@new) serve" or diag explain [ worker_pids($s) ];
    ok wait_reconnected($s, \@nodes, $offset, 20, not => \@old),
        '  every agent moved to a new worker';
    my ($rt, $res) = timed(sub {
        $s->request('GET', "$base/node_states") });
    ok $res->{status} == 200 && $rt < 3,
        sprintf('  REST answers at once (%d in %.2f s)', $res->{status}, $rt);
    return @new;
}

# the org feed, opened before any job: only what happens next
my $orgfeed = PushJobs::Fault::Feed->new($s, "$base/job_status_feed");

my $id = $s->start_job({ command => 'sleep 4', nodes => \@nodes,
                         capture_output => JSON::PP::true });
push @ids, $id;
my $feed = PushJobs::Fault::Feed->new($s, "$base/job_status_feed/$id");
ok $feed->follow(30, sub {
    3 == grep { $_->{event} eq 'run_start' } $_[0]->events }),
    'job feed open, sleep 4 runs on 3 agents';
ok $orgfeed->follow(10, sub { @{ org_ids($_[0]) } >= 1 }),
    '  the org feed saw its start';

reload('mid-job');

ok $feed->follow(40), 'the job feed reader saw the job end';
cmp_ok $feed->opens, '>=', 2,
    '  after the old worker ended its feed, on a new connection';
is_deeply [ map { $_->{id} } $feed->events ],
    [ map { "job-$_" } @{ db_list("SELECT seq FROM pushjobs.job_events
                                    WHERE job_id = '$id' ORDER BY seq") } ],
    '  every event of job_events exactly once, in order'
    or diag explain [ map { "$_->{id} $_->{event}" } $feed->events ];
$feed->close;
ok $orgfeed->follow(10, sub { $_[0]->opens >= 2 }),
    'the org feed reader, ended by its old worker, reconnected';

my $job = $s->wait_job($id, 30);
is $job->{status}, 'complete', 'the job completes';
is_deeply $job->{nodes}, { succeeded => [ sort @nodes ] },
    '  every node succeeded' or diag explain $job;

# a second job after the reload, and a second reload with the org feed
# (on a new worker now) idle
$id = $s->start_job({ command => 'true', nodes => [ $nodes[0] ] });
push @ids, $id;
is $s->wait_job($id, 30)->{status}, 'complete',
    'a job posted after the reload completes';
reload('org feed idle');
ok $orgfeed->follow(10, sub { $_[0]->opens >= 3 }),
    'the org feed reader reconnected again';
$id = $s->start_job({ command => 'echo after', nodes => [ @nodes[1, 2] ] });
push @ids, $id;
is $s->wait_job($id, 30)->{status}, 'complete',
    'a job posted after the second reload completes';

# the org feed: 3 starts, 3 job_completes, across two reconnects
ok $orgfeed->follow(20, sub { @{ org_ids($_[0]) } >= 6 }),
    'the org feed reader saw the three jobs';
cmp_ok $orgfeed->opens, '>=', 3, '  on a new connection after each reload';
my $first = (org_ids($orgfeed)->[0] // 'org-0') =~ s/^org-//r;
is_deeply org_ids($orgfeed),
    [ map { "org-$_" } @{ db_list("SELECT id FROM pushjobs.org_events
                                    WHERE org = '$org' AND id >= $first
                                    ORDER BY id") } ],
    '  every event of org_events exactly once, in order'
    or diag explain [ map { "$_->{id} $_->{event}" } $orgfeed->events ];
is_deeply [ map { $_->{event} } $orgfeed->events ],
    [ qw(start job_complete) x 3 ], '  start and job_complete of each job';
$orgfeed->close;

# an agent that cannot reconnect (stopped) is offline at once after a
# reload: its old worker, ending cleanly, writes its last presence batch
# (the channels it closed) before it exits, even behind a batch in flight
# (twice)
my $off;
for my $try (1, 2) {
    my $n = $nodes[ $try % @nodes ];
    my $pid = $s->{procs}{"agent:$n"};
    kill 'STOP', -$pid;    # both agent processes: its group
    my @old = worker_pids($s);
    $off = length $s->error_log;
    kill 'HUP', $master;
    ok PushJobs::Stack::wait_for(30, sub {
        my %old = map { $_ => 1 } @old;
        my @w = worker_pids($s);
        @w == 2 && !grep { $old{$_} } @w;
    }, 0.1), "reload with $n stopped (SIGSTOP): the old workers exited";
    my $state;
    ok PushJobs::Stack::wait_for(3, sub {
        my $res = $s->request('GET', "$base/node_states/$n");
        $state = $res->{json};
        $state && $state->{status} eq 'offline';
    }, 0.1), "  $n is offline within 3 s: its old worker wrote it before "
             . 'it exited' or diag explain $state;
    # a job posted now, its agent still away, counts on it (the old worker
    # handed its channel over): the commit goes with its hello
    my $job = $try == 1 && $s->start_job({ command => 'echo handover',
                                           nodes => [ $n ] });
    kill 'CONT', -$pid;
    ok $s->wait_online([$n], 20), "  continued, $n is back";
    if ($job) {
        push @ids, $job;
        is +($s->wait_job($job, 30) // {})->{status}, 'complete',
            "  a job posted while $n was away (handed over) ran on it";
    }
}
ok wait_reconnected($s, \@nodes, $off, 20),
    'every agent is back, on a new worker';

# A request that waits on PostgreSQL when nginx reloads: its old worker
# holds its exit while the query is outstanding, at most 5 s, and answers
# it -- 201 when PostgreSQL answers in time, else 503 with the contract's
# body -- then exits with nothing left open (no [alert] "open socket left
# in connection").  A lock on the jobs table holds create_job() back.
sub lock_jobs {
    open(my $fh, '|-', 'psql', '-X', '-q', '-o', '/dev/null', '-h',
         '127.0.0.1', '-p', $s->{pg_port}, '-U', 'pushjobs', '-d', 'pushjobs')
        or die "psql: $!";
    my $old = select $fh; $| = 1; select $old;
    print $fh "SET application_name = 'fault-lock-jobs';\nBEGIN;\n"
              . "LOCK TABLE pushjobs.jobs IN SHARE MODE;\n";
    PushJobs::Stack::wait_for(10, sub {
        $s->psql('pushjobs', "SELECT count(*) FROM pg_stat_activity WHERE "
                 . "application_name = 'fault-lock-jobs' AND "
                 . "state = 'idle in transaction'") == 1 }, 0.1)
        or die 'jobs table not locked';
    return $fh;
}

# the pid of the worker whose create_job() waits on the lock, or undef
sub waiting_post {
    my ($port) = $s->psql('pushjobs', "SELECT client_port FROM "
        . "pg_stat_activity WHERE wait_event_type = 'Lock' AND "
        . "query LIKE '%create_job%'") =~ /^(\d+)$/m or return undef;
    return PushJobs::Fault::port_worker($s, $port, $s->{pg_port});
}

for my $case ([ 'answered in time', 201 ], [ 'not answered', 503 ]) {
    my ($what, $want) = @$case;
    my $lock = lock_jobs();
    my $cmd = $want == 201 ? 'echo in-time' : 'echo too-late';
    my $req = $s->request_async('POST', "$base/jobs",
        body => { command => $cmd, nodes => [ $nodes[0] ] });
    my $pid;
    ok PushJobs::Stack::wait_for(10, sub { $pid = waiting_post() }, 0.05),
        "reload, PostgreSQL $what: a POST waits on PostgreSQL (worker "
        . ($pid // '?') . ')';
    my $off = length $s->error_log;
    my $t0 = time;
    kill 'HUP', $master;
    ok PushJobs::Stack::wait_for(10, sub {
        substr($s->error_log, $off) =~ /\b$pid#\d+: gracefully shutting down/
    }, 0.05), '  its worker is shutting down';
    my $gone = sub { !grep { $_ == $pid } worker_pids($s) };
    if ($want == 201) {
        ok !PushJobs::Stack::wait_for(1, $gone, 0.05),
            '  and waits for the query (still there 1 s later)';
        print $lock "COMMIT;\n";
        close $lock;
    }
    my $res = $req->result(15);
    is $res && $res->{status}, $want, "  the POST is answered $want"
        or diag explain $res;
    if ($want == 201) {
        push @ids, my $id = PushJobs::Stack::job_id_of($res);
        is +($s->wait_job($id, 30) // {})->{status}, 'complete',
            '  its job runs';
    } else {
        is_deeply $res && $res->{json},
            { error => ['the push jobs database is not available'] },
            '  with the contract\'s body';
        my $t = $res ? $res->{at} - $t0 : -1;
        ok $t > 4 && $t < 8,
            sprintf('  after the exit\'s bound of 5 s (%.2f s)', $t);
    }
    ok PushJobs::Stack::wait_for(3, $gone, 0.05),
        '  its worker exits once the query is answered';
    if ($want == 503) {
        # the abandoned statement still runs once the lock is gone, as any
        # statement whose connection was lost after it was sent: if it
        # commits, its job must run as any other
        print $lock "COMMIT;\n";
        close $lock;
        ok PushJobs::Stack::wait_for(10, sub { !defined waiting_post() },
                                     0.1), '  the lock released';
        push @ids, split /\n/, $s->psql('pushjobs', "SELECT id FROM "
            . "pushjobs.jobs WHERE command = '$cmd'");
    }
    is_deeply [ PushJobs::Fault::bad_log_lines($s) ], [],
        '  no [alert] (open socket left), [crit] or worker death';
    ok wait_reconnected($s, \@nodes, $off, 20, not => [ $pid ]),
        '  every agent is back, on a new worker';
}

# A worker that (re)connects its LISTEN channel after a reload or an outage
# dispatches the commits of every voting job again (recent_jobs()), from a
# snapshot that may predate an agent's answer: a commit the agent refused
# on this channel must not be offered to it again, or an agent that is free
# by then accepts it and the node votes twice (seen in t/fault-random.t
# after a PostgreSQL outage: quorum_vote failure, then
# client_died_while_voting).  Here a lock on another job's row holds the
# agent's inputs back, so that its refusal and its acceptance are applied
# together, and the second dispatch is a NOTIFY.
my ($ghost, $status) = PushJobs::WS->connect($s, 'ghost',
    extra => PushJobs::WS::frame(1,
        '{"type":"hello","v":1,"agent":"fault-reload.t","jobs":[]}'));
is $status, 101, 'scripted agent for ghost connected';
ok $s->wait_online(['ghost'], 10), '  online';

sub ghost_next {
    my ($type, $id, $timeout) = @_;
    my $deadline = time + $timeout;
    while ((my $left = $deadline - time) > 0) {
        my $t = $ghost->read_text($left) // return undef;
        my $m = eval { $s->json->decode($t) } or next;
        return $m if $m->{type} eq $type && ($m->{job_id} // '') eq $id;
    }
    return undef;
}

sub ghost_say {
    my ($type, $id) = @_;
    $ghost->send_text($s->json->encode({ type => $type, v => 1,
                                         job_id => $id, reason => 'busy' }));
}

my $held = $s->start_job({ command => 'true', nodes => ['ghost'] });
ok ghost_next('commit', $held, 10), 'ghost got a first job';
open(my $lock, '|-', 'psql', '-X', '-q', '-o', '/dev/null', '-h', '127.0.0.1',
     '-p', $s->{pg_port}, '-U', 'pushjobs', '-d', 'pushjobs')
    or die "psql: $!";
{
    my $old = select $lock; $| = 1; select $old;
}
print $lock "SET application_name = 'fault-lock';\nBEGIN;\n"
            . "SELECT 1 FROM pushjobs.jobs WHERE id = '$held' FOR UPDATE;\n";
ok PushJobs::Stack::wait_for(10, sub {
    $s->psql('pushjobs', "SELECT count(*) FROM pg_stat_activity WHERE "
             . "application_name = 'fault-lock' AND "
             . "state = 'idle in transaction'") == 1 }, 0.1),
    '  its row locked';
ghost_say('nack_commit', $held);

$id = $s->start_job({ command => 'true', nodes => [ 'ghost', $nodes[0] ],
                      quorum => 1 });
ok ghost_next('commit', $id, 10), 'ghost got a second job';
ghost_say('nack_commit', $id);
$s->psql('pushjobs', "SELECT pg_notify('pushjobs', 'commit $org $id')");
my $again = ghost_next('commit', $id, 2);
ok !$again, '  refused it; a second dispatch does not offer it again';
ghost_say('ack_commit', $id) if $again;    # as a free agent would

print $lock "COMMIT;\n";
close $lock;
is $s->wait_job($held, 20)->{status}, 'quorum_failed',
    'the first job fails its quorum';
$job = $s->wait_job($id, 20);
is $job->{status}, 'complete', 'the second completes on ' . $nodes[0];
is_deeply [ PushJobs::Fault::exactly_once($s, $id) ], [],
    '  with one vote of ghost'
    or diag explain [ PushJobs::Engine::events($id) ];
$ghost->close;
push @ids, $held;

is_deeply [ check_invariants($s, [ grep { $_ ne $id } @ids ]) ], [],
    'invariants: every job final, each result once, no gap, no [alert], '
    . '[crit] or worker death';
is_deeply [ PushJobs::Fault::jobs_final($s, $id),
            PushJobs::Fault::bad_log_lines($s) ], [],
    '  and the last job is final';

$s->stop;
done_testing;
