# An nginx worker killed with SIGKILL mid-job: the master starts another,
# the agents whose channels it held reconnect, and the job goes on with
# what they report after the reconnect; REST requests keep answering in
# bounded time.  Three cases: while the job runs, while it is voting,
# and while a job feed is open on the killed worker (its reader resumes
# with Last-Event-ID and misses nothing).  The invariants are read from
# the database and nginx's log (PushJobs::Fault).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;
use PushJobs::Fault qw(check_invariants timed worker_pids agent_workers
                       wait_reconnected socket_worker kill_worker);
use PushJobs::WS;

my $json = PushJobs::Stack::json();

# a REST request during a fault may wait for the master to replace the
# worker its connection landed on; 3 s is a margin for a loaded 2-core box
my $REST_BOUND = 3;

my $s = PushJobs::Stack->new(agents => 4, workers => 2,
    nginx_extra => 'pushjobs_node_lost_timeout 20s; '
                   . 'pushjobs_voting_timeout 30s; '
                   . 'pushjobs_sweep_interval 200ms; '
                   . 'pushjobs_feed_linger 30s;');
$s->start;

my $org = $s->org;
my $base = "/organizations/$org/pushy";
my @nodes = $s->agent_names;
my (@ids, @killed);

sub log_len { length $s->error_log }

# nodes by the worker holding their channel
sub by_worker {
    my $w = agent_workers($s);
    my %by;
    push @{ $by{ $w->{$_} } }, $_ for grep { $w->{$_} } @nodes;
    return \%by;
}

# reuseport spreads connections by their address: restart agents
# (bounded) until both workers hold at least one channel
sub spread {
    my $i = 0;
    return PushJobs::Stack::wait_for(90, sub {
        my $by = by_worker();
        my %live = map { $_ => 1 } worker_pids($s);
        return 1 if 2 == grep { $live{$_} } keys %$by;
        my $n = $nodes[ $i++ % @nodes ];
        $s->stop_agent($n);
        $s->start_agent($n);
        $s->wait_online([$n], 20);
        return 0;
    }, 0.1);
}

# REST requests while the fault is on: every one answers, within the bound
sub rest_during_fault {
    my ($id, $what) = @_;
    my @slow;
    for my $req (['GET', "$base/jobs/$id"], ['GET', "$base/node_states"],
                 ['GET', "$base/jobs"])
    {
        my ($t, $res) = timed(sub { $s->request(@$req) });
        push @slow, sprintf('%s %s: %d in %.2f s', @$req, $res->{status}, $t)
            if $res->{status} != 200 || $t > $REST_BOUND;
    }
    my ($t, $res) = timed(sub {
        $s->http->get($s->url . '/pushy/_status') });
    push @slow, sprintf('_status: %d in %.2f s', $res->{status}, $t)
        if $res->{status} != 200 || $t > $REST_BOUND;
    is_deeply \@slow, [],
        "$what: REST answers 200 within ${REST_BOUND} s during the fault";
}

sub running {
    my ($id, $n) = @_;
    return PushJobs::Stack::wait_for(30, sub {
        my $j = $s->job($id);
        $j && @{ $j->{nodes}{running} // [] } == $n;
    }, 0.1);
}

# --- a worker killed while the job runs -------------------------------------

ok spread(), 'agents spread over both workers' or diag explain by_worker();

my $id = $s->start_job({ command => 'sleep 3', nodes => \@nodes,
                         capture_output => JSON::PP::true });
push @ids, $id;
ok running($id, 4), 'sleep 3 running on 4 agents';

my $by = by_worker();
my ($victim) = sort { @{ $by->{$b} } <=> @{ $by->{$a} } } keys %$by;
my @orphans = @{ $by->{$victim} };
my $offset = log_len();
my @new = kill_worker($s, $victim);
push @killed, $victim;
ok @new, "worker $victim (channels of @orphans) killed: the master "
         . "started another (@new)";
rest_during_fault($id, 'running job');
ok wait_reconnected($s, \@orphans, $offset, 20, not => [$victim]),
    "  @orphans reconnected to a live worker";

my $job = $s->wait_job($id, 30);
is $job->{status}, 'complete', '  the job completes';
is_deeply $job->{nodes}, { succeeded => [ sort @nodes ] },
    '  every node succeeded, those of the killed worker too'
    or diag explain $job;
is_deeply [ check_invariants($s, \@ids, killed => \@killed) ], [],
    '  invariants: final, each result once, no gap, no unexpected log line';

# --- a worker killed while the job is voting --------------------------------

# ghost, a scripted agent, holds the vote open: it answers the commit only
# after the kill
my ($ghost, $status) = PushJobs::WS->connect($s, 'ghost',
    extra => PushJobs::WS::frame(1,
        '{"type":"hello","v":1,"agent":"fault-worker.t","jobs":[]}'));
is $status, 101, 'scripted agent for ghost connected';
my @inbox;

# ghost's messages so far (answering pings), then the first of TYPE for ID
sub ghost_expect {
    my ($type, $id, $timeout) = @_;
    my $deadline = Time::HiRes::time() + ($timeout // 10);
    while (1) {
        for my $i (0 .. $#inbox) {
            next unless $inbox[$i]{type} eq $type
                        && ($inbox[$i]{job_id} // '') eq $id;
            return splice @inbox, $i, 1;
        }
        my $left = $deadline - Time::HiRes::time();
        return undef if $left <= 0;
        my $t = $ghost->read_text($left > 0.2 ? 0.2 : $left);
        push @inbox, $json->decode($t) if defined $t;
    }
}

sub ghost_say {
    my ($type, $id, %f) = @_;
    $ghost->send_text($json->encode({ type => $type, v => 1, job_id => $id,
                                      %f }));
}

ok $s->wait_online(['ghost'], 10), '  online';
ok spread(), 'agents still spread over both workers';

$id = $s->start_job({ command => 'echo voting', nodes => [ @nodes, 'ghost' ] });
push @ids, $id;
ok ghost_expect('commit', $id), 'ghost got the commit, holds its vote';
ok PushJobs::Stack::wait_for(20, sub {
    ghost_expect('none', '', 0.01);
    my $j = $s->job($id);
    $j && $j->{status} eq 'voting' && @{ $j->{nodes}{ready} // [] } == 4;
}, 0.1), '  the 4 agents voted: the job is voting, waiting for ghost';

# kill a worker that does not hold ghost's channel
$by = by_worker();
my $gw = agent_workers($s)->{ghost};
($victim) = grep { $_ != $gw } keys %$by;
@orphans = @{ $by->{$victim} };
$offset = log_len();
@new = kill_worker($s, $victim);
push @killed, $victim;
ok @new, "worker $victim (channels of @orphans) killed while voting";
rest_during_fault($id, 'voting job');
ok wait_reconnected($s, \@orphans, $offset, 20, not => [$victim]),
    "  @orphans reconnected";
is $s->job($id)->{status}, 'voting', '  the job still waits for ghost';

ghost_say('ack_commit', $id);
ok ghost_expect('run', $id, 15), 'ghost votes: the job runs';
ghost_say('ack_run', $id);
ghost_say('succeeded', $id, exit_status => 0);
ok ghost_expect('ack', $id, 15), '  ghost succeeded, acked';

$job = $s->wait_job($id, 30);
is $job->{status}, 'complete', '  the job completes';
is_deeply $job->{nodes}, { succeeded => [ sort @nodes, 'ghost' ] },
    '  every node succeeded, those of the killed worker too'
    or diag explain $job;
is_deeply [ check_invariants($s, \@ids, killed => \@killed) ], [],
    '  invariants hold';
$ghost->close;

# --- a worker killed while a job feed is open on it -------------------------

ok spread(), 'agents still spread over both workers';
$id = $s->start_job({ command => 'sleep 4', nodes => \@nodes });
push @ids, $id;
my $feed = PushJobs::Fault::Feed->new($s, "$base/job_status_feed/$id");
ok $feed->follow(30, sub {
    grep { $_->{event} eq 'run_start' } $_[0]->events }),
    'job feed open, the job runs';
my $fw;
ok PushJobs::Stack::wait_for(5, sub {
    $fw = socket_worker($s, $feed->sse->{sock}) }, 0.1),
    '  the feed is held by one worker';
$by = by_worker();
@orphans = @{ $by->{$fw} // [] };
$offset = log_len();
@new = kill_worker($s, $fw);
push @killed, $fw;
ok @new, "worker $fw (the feed, channels of @orphans) killed";
rest_during_fault($id, 'feed');
ok $feed->follow(40), '  the reader resumed and saw the job end';
cmp_ok $feed->opens, '>=', 2, '  on a new connection, with Last-Event-ID';
my @db = map { "job-$_" } split /\n/, $s->psql('pushjobs',
    "SELECT seq FROM pushjobs.job_events WHERE job_id = '$id' ORDER BY seq");
is_deeply [ map { $_->{id} } $feed->events ], \@db,
    '  every event of the job exactly once, in order' or
    diag explain [ map { "$_->{id} $_->{event}" } $feed->events ];
ok wait_reconnected($s, \@orphans, $offset, 20, not => [$fw]),
    "  @orphans reconnected" if @orphans;

$job = $s->wait_job($id, 30);
is $job->{status}, 'complete', '  the job completes';
is_deeply $job->{nodes}, { succeeded => [ sort @nodes ] },
    '  every node succeeded' or diag explain $job;
$feed->close;

is_deeply [ check_invariants($s, \@ids, killed => \@killed) ], [],
    'invariants of all three jobs hold';
my @w = worker_pids($s);
is scalar @w, 2, q{two workers at the end};

$s->stop;
done_testing;
