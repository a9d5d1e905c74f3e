# pushjobs-agent ends a job's whole process tree: on run_timeout (the
# server's timed_out and its abort), on an abort (SIGTERM to the group, then
# SIGKILL after kill_grace_period for what ignores it), and when the agent
# itself is stopped mid-run (the job's report is spooled and delivered by
# the restarted agent).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use Test::More;
use PushJobs::Stack;

my $tmp = tempdir('pushjobs-agent-kill-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $tmp;
PushJobs::Stack::spew("$tmp/tree", "#!/bin/sh\nsleep 3171 & sleep 3172; wait\n",
                      0755);
PushJobs::Stack::spew("$tmp/stubborn",
    "#!/bin/sh\ntrap '' TERM\nsleep 3181 & sleep 3182; wait\n", 0755);

my $stack = PushJobs::Stack->new(
    agents => 1,
    whitelist => { tree => "$tmp/tree", stubborn => "$tmp/stubborn" },
    whitelist_regex => [],
    client_rb_extra => "kill_grace_period 2\n",
);
$stack->start;

my $org = $stack->org;
my ($node) = $stack->agent_names;
my $log = $stack->agent_log($node);

# processes of the test scripts still alive
sub left {
    my ($pat) = @_;
    return scalar grep { /\d/ } split /\n/, `pgrep -f '$pat'`;
}

sub wait_running {
    my ($id) = @_;
    return PushJobs::Stack::wait_for(20, sub {
        my $j = $stack->job($id);
        $j && ($j->{nodes}{running} // [])->[0] && left('sleep 317[12]|sleep 318[12]') >= 2;
    });
}

# run_timeout: the server times the node out; the agent ends the tree
my $id = $stack->start_job({ command => 'tree', nodes => [$node],
                             run_timeout => 2 });
my $job;
ok wait_running($id), 'the script and its two sleeps run';
$job = $stack->wait_job($id, 30);
is $job->{status}, 'timed_out', 'job timed_out after run_timeout';
is_deeply $job->{nodes}, { timed_out => [$node] }, 'node timed_out';
ok PushJobs::Stack::wait_for(10, sub { left('sleep 317[12]') == 0 }),
    'no process of the job is left (background sleep included)';
ok PushJobs::Stack::wait_for(10, sub {
    PushJobs::Stack::slurp($log) =~ /job $id: killed by signal 15/ }),
    'the agent reaped it after SIGTERM';

# a tree that ignores SIGTERM: SIGKILL after kill_grace_period
$id = $stack->start_job({ command => 'stubborn', nodes => [$node],
                          run_timeout => 1 });
ok wait_running($id), 'the stubborn script runs';
$job = $stack->wait_job($id, 30);
is_deeply $job->{nodes}, { timed_out => [$node] }, 'node timed_out';
ok PushJobs::Stack::wait_for(10, sub { left('sleep 318[12]') == 0 }),
    'SIGKILL ended the tree that ignored SIGTERM';
like PushJobs::Stack::slurp($log), qr/job $id: still running 2 s after SIGTERM/,
    'after kill_grace_period';

# an abort through the REST API (when the server has it)
$id = $stack->start_job({ command => 'tree', nodes => [$node] });
ok wait_running($id), 'job running';
my $res = $stack->request('POST', "/organizations/$org/pushy/jobs/$id/abort",
                          body => {});
SKIP: {
    skip "the server has no abort endpoint yet ($res->{status})", 3
        if $res->{status} == 501 || $res->{status} == 404;
    ok $res->{status} >= 200 && $res->{status} < 300, 'abort accepted';
    $job = $stack->wait_job($id, 30);
    is_deeply $job->{nodes}, { aborted => [$node] }, 'node aborted';
    ok PushJobs::Stack::wait_for(10, sub { left('sleep 317[12]') == 0 }),
        'the abort ended the tree';
}

# the agent stopped mid-run: the job's group is ended, the report spooled,
# and delivered by the next agent process (with no abort endpoint, the job
# of the abort test above is still running: that is the one stopped here)
if ($res->{status} != 501 && $res->{status} != 404) {
    $id = $stack->start_job({ command => 'tree', nodes => [$node] });
    ok wait_running($id), 'job running';
}
$stack->stop_agent($node, 'TERM');
is left('sleep 317[12]'), 0, 'the stopped agent left no process of its job';
my @spooled = glob($stack->agent_dir($node) . "/spool/*.json");
is scalar @spooled, 1, 'one final report spooled';
$stack->start_agent($node);
$job = $stack->wait_job($id, 30);
is_deeply $job->{nodes}, { failed => [$node] },
    'the restarted agent delivered the report: node failed (killed)';
ok PushJobs::Stack::wait_for(10, sub {
    !glob($stack->agent_dir($node) . "/spool/*.json") }),
    'the spool drains on the server\'s ack';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';
$stack->stop;
done_testing;
