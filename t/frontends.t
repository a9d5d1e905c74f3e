# Two front ends on one PostgreSQL are one job system: a job posted to one
# runs on agents connected to the other, either front end's feed shows it,
# node states agree, a job spans agents of both; and when a front end goes
# away (stopped, or killed), its agents, configured for it alone, go
# offline everywhere, and a job they were running ends.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;
use PushJobs::SSE;

my $stack = PushJobs::Stack->new(agents => 3, workers => 2,
    nginx_extra => 'pushjobs_node_lost_timeout 3s; '
                   . 'pushjobs_sweep_interval 500ms;');
$stack->start;
$stack->start_nginx('fe2');

my $org = $stack->org;
my $base = "/organizations/$org/pushy";

sub connected_to {
    my ($fe, $node) = @_;
    my $n = () = $stack->error_log($fe)
                 =~ /agent "\Q$node\E" of "\Q$org\E" connected/g;
    return $n;
}

sub states {
    my ($fe) = @_;
    my $res = $stack->request('GET', "$base/node_states", fe => $fe);
    return $res->{status} == 200
           ? { map { $_->{node_name} => $_->{availability} } @{ $res->{json} } }
           : undef;
}

sub state_of {
    my ($fe, $node) = @_;
    my $res = $stack->request('GET', "$base/node_states/$node", fe => $fe);
    return $res->{json};
}

sub wait_job_on {
    my ($fe, $id, $timeout) = @_;
    my $job;
    PushJobs::Stack::wait_for($timeout, sub {
        my $res = $stack->request('GET', "$base/jobs/$id", fe => $fe);
        $job = $res->{json};
        $job && $job->{status} !~ /^(new|voting|running)$/;
    }, 0.1);
    return $job;
}

# node1 moves to fe2; node2 and node3 stay on fe1
my $before = connected_to('fe2', 'node1');
$stack->stop_agent('node1');
$stack->start_agent('node1', fe => 'fe2');
ok PushJobs::Stack::wait_for(30, sub { connected_to('fe2', 'node1') > $before },
                             0.1),
    'node1 connected to fe2';
ok $stack->wait_online([qw(node1 node2 node3)], 30), 'all three online';

# node states agree on both front ends
my %all = map { $_ => 'available' } qw(node1 node2 node3);
is_deeply states('fe1'), \%all, 'node_states on fe1: all available';
is_deeply states('fe2'), \%all, 'node_states on fe2: all available';
for my $fe (qw(fe1 fe2)) {
    is_deeply state_of($fe, 'node1'),
        { node_name => 'node1', status => 'online',
          availability => 'available' }, "node_states/node1 on $fe: online";
}

# a job posted to fe1 runs on node1, whose channel is on fe2; fe2's feed
# shows it
my $id = $stack->start_job({ command => 'sleep 1', nodes => ['node1'] },
                           fe => 'fe1');
my $sse = PushJobs::SSE->open($stack, "$base/job_status_feed/$id",
                              fe => 'fe2');
is $sse->status, 200, "fe2's feed of a job posted to fe1";
my @ev = $sse->until_event('job_complete', 30);
is_deeply [ map { $_->{event} } @ev ],
    [qw(start quorum_vote quorum_succeeded run_start run_complete
        job_complete)], '  shows every event of the job' or diag explain \@ev;
is $ev[-1]{json}{status}, 'complete', '  complete';
ok $sse->wait_end(5), '  and ends with it';

my $job = wait_job_on('fe2', $id, 30);
is $job->{status}, 'complete', 'the job is complete, read on fe2';
is_deeply $job->{nodes}, { succeeded => ['node1'] }, '  node1 succeeded';

# a job spanning agents on both front ends, posted to fe2
$id = $stack->start_job({ command => 'echo both', nodes => [qw(node1 node2)],
                          capture_output => JSON::PP::true }, fe => 'fe2');
$job = wait_job_on('fe1', $id, 30);
is $job->{status}, 'complete', 'a job on agents of both front ends completes';
is_deeply $job->{nodes}, { succeeded => [qw(node1 node2)] },
    '  both nodes succeeded';
for my $n (qw(node1 node2)) {
    my $res = $stack->request('GET', "$base/jobs/$id/output/$n/stdout",
                              fe => $n eq 'node1' ? 'fe1' : 'fe2',
                              headers => { Accept => 'application/octet-stream' });
    is $res->{content}, "both\n", "  ${n}'s output, read on the other front end";
}

# fe2 stops gracefully: node1, configured for fe2 only, goes offline, and
# fe1 says so
$stack->stop_nginx('fe2');
ok PushJobs::Stack::wait_for(15, sub {
    my $s = states('fe1');
    $s && !exists $s->{node1} && keys %$s == 2;
}, 0.2), 'fe2 stopped: node_states on fe1 lists node2 and node3 only';
is_deeply state_of('fe1', 'node1'),
    { node_name => 'node1', status => 'offline',
      availability => 'unavailable' }, '  node_states/node1 on fe1: offline';
is state_of('fe1', 'node2')->{status}, 'online', '  node2 still online';

$id = $stack->start_job({ command => 'true', nodes => [qw(node1 node2)] });
$job = $stack->wait_job($id, 30);
is $job->{status}, 'quorum_failed', 'a job on node1 now fails its quorum';
is_deeply $job->{nodes}, { unavailable => ['node1'], was_ready => ['node2'] },
    '  node1 unavailable' or diag explain $job;

# fe2 comes back and node1 with it; then fe2 dies (SIGKILL, no goodbye)
# while node1 runs a job: its presence goes once fe2's workers are overdue,
# and after node_lost_timeout the job ends without it
$stack->start_nginx('fe2');
$before = connected_to('fe2', 'node1');
$stack->stop_agent('node1');
$stack->start_agent('node1', fe => 'fe2');
ok PushJobs::Stack::wait_for(30, sub { connected_to('fe2', 'node1') > $before },
                             0.1),
    'fe2 restarted, node1 connected to it again';
ok $stack->wait_online(['node1'], 30), '  online';

$id = $stack->start_job({ command => 'sleep 60', nodes => [qw(node1 node2)],
                          quorum => 1 }, fe => 'fe1');
ok PushJobs::Stack::wait_for(20, sub {
    my $j = $stack->job($id);
    $j && ($j->{nodes}{running} // [])->[0] && @{ $j->{nodes}{running} } == 2;
}, 0.1), 'sleep 60 running on node1 (fe2) and node2 (fe1)';

my $pid = $stack->{procs}{'nginx:fe2'};
kill 'KILL', -$pid;
$stack->stop_nginx('fe2');

ok PushJobs::Stack::wait_for(45, sub {
    my $s = state_of('fe1', 'node1');
    $s && $s->{status} eq 'offline';
}, 0.5), 'fe2 killed: node1 offline on fe1 once its workers are overdue';
ok !exists states('fe1')->{node1}, '  and gone from the node_states list';

ok PushJobs::Stack::wait_for(20, sub {
    my $j = $stack->job($id);
    $j && ($j->{nodes}{crashed} // [])->[0];
}, 0.2), '  node1 crashed in the running job after node_lost_timeout'
    or diag explain $stack->job($id);

# node2 still runs its sleep: abort the job to end it
my $res = $stack->request('POST', "$base/jobs/$id/abort", body => {});
ok $res->{status} =~ /^20[0-4]$/, 'abort the rest';
$job = $stack->wait_job($id, 30);
isnt $job->{status}, 'running', '  the job ended: ' . ($job->{status} // '?');

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
