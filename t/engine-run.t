# The job engine's run phase (contract §3.3, §3.4 run table): every
# transition an agent can cause, with scripted peers ("ghost", and "node3"
# once its harness agent is stopped) for what a real agent never does, and
# real agents for the run timeout and an agent restarted mid-run.  Also:
# messages for unknown jobs, duplicate final reports, channels lost mid-run
# with and without a reconnect within pushjobs_node_lost_timeout.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 qw(encode_base64);
use Test::More;
use Time::HiRes qw(time);
use PushJobs::Stack;
use PushJobs::WS;
use PushJobs::Engine;

my $json = PushJobs::Stack::json();

my $stack = PushJobs::Stack->new(agents => 3, workers => 2,
    nginx_extra => 'pushjobs_voting_timeout 3s; '
                   . 'pushjobs_node_lost_timeout 3s; '
                   . 'pushjobs_sweep_interval 500ms; '
                   . 'pushjobs_ping_interval 60s;');
$stack->start;

my $org = $stack->org;
PushJobs::Engine->init($stack);

$stack->stop_agent('node3');
ok PushJobs::Stack::wait_for(10, sub { node_state('node3') eq 'offline' }),
    'node3 agent stopped';

my $g = peer('ghost');
my $p3 = peer('node3');

# A job on ghost and node3, both committed, both sent the run.
sub running_job {
    my (%opt) = @_;
    my $id = $stack->start_job({ command => 'true',
                                 nodes => [ 'ghost', 'node3' ], %opt });
    expect($g, 'commit', $id) or die 'no commit';
    expect($p3, 'commit', $id) or die 'no commit';
    say_($g, 'ack_commit', $id);
    wait_nodes($id, { ready => ['ghost'], new => ['node3'] });
    say_($p3, 'ack_commit', $id);
    expect($g, 'run', $id) or die 'no run';
    expect($p3, 'run', $id) or die 'no run';
    return $id;
}

# --- scripted run transitions ---------------------------------------------

# ready -ack_run-> running; running -ack_run-> running; running -succeeded->
# succeeded, applied once however often it arrives, acked every time;
# ready -nack_run-> failed + abort
my $id = running_job(capture_output => JSON::PP::true);
say_($g, 'ack_run', $id);
is_deeply wait_nodes($id, { running => ['ghost'], ready => ['node3'] }),
    { running => ['ghost'], ready => ['node3'] }, 'ack_run: ready -> running';
say_($g, 'ack_run', $id);
is_deeply [ sync($g) ], [], '  a second ack_run: nothing';
my $report = { exit_status => 0, stdout => encode_base64("out\n", ''),
               stderr => '', truncated => JSON::PP::false };
say_($g, 'succeeded', $id, %$report);
ok expect($g, 'ack', $id), 'succeeded: acked';
is_deeply wait_nodes($id, { succeeded => ['ghost'], ready => ['node3'] }),
    { succeeded => ['ghost'], ready => ['node3'] }, '  running -> succeeded';
say_($g, 'succeeded', $id, %$report, stdout => encode_base64("again\n", ''));
ok expect($g, 'ack', $id), 'the same report again: acked';
say_($g, 'failed', $id, exit_status => 1);
ok expect($g, 'ack', $id), 'a contradicting report: acked';
is_deeply [ sync($g) ], [], '  no abort for either';
say_($p3, 'nack_run', $id, reason => 'not committed');
ok expect($p3, 'abort', $id), 'nack_run while ready: told to abort';
my $job = $stack->wait_job($id, 10);
is $job->{status}, 'complete', '  job complete';
is_deeply $job->{nodes}, { succeeded => ['ghost'], failed => ['node3'] },
    '  succeeded + failed';
is_deeply [ lines_of("SELECT node_name, exit_status FROM pushjobs.job_nodes "
                     . "WHERE job_id = '$id' ORDER BY 1") ],
    [ "ghost\t0", "node3\t" ], '  the first report applied';
my $res = $stack->request('GET',
    "/organizations/$org/pushy/jobs/$id/output/ghost/stdout",
    headers => { Accept => 'application/octet-stream' });
is $res->{content}, "out\n", '  and its output kept';
is_deeply [ events($id) ],
    [ 'start', 'quorum_vote ghost success', 'quorum_vote node3 success',
      'quorum_succeeded', 'run_start ghost', 'run_complete ghost success',
      'rehab node3', 'run_complete node3 run_nacked',
      'job_complete complete' ],
    '  events: each transition once';

# a message for a job that ended: abort, except for final reports
say_($g, 'ack_run', $id);
is_deeply [ sync($g) ], [ "abort $id" ],
    'ack_run for a finished job: told to abort';

# running -nack_run-> failed + abort (run_nacked_while_running);
# ready -succeeded-> succeeded (deliberately not crashed: the ack_run was
# lost, the result was not)
$id = running_job();
say_($g, 'ack_run', $id);
wait_nodes($id, { running => ['ghost'], ready => ['node3'] });
say_($g, 'nack_run', $id, reason => 'could not start');
ok expect($g, 'abort', $id), 'nack_run while running: told to abort';
say_($p3, 'succeeded', $id, exit_status => 0);
ok expect($p3, 'ack', $id), 'succeeded without ack_run: acked';
$job = $stack->wait_job($id, 10);
is $job->{status}, 'complete', '  job complete';
is_deeply $job->{nodes}, { failed => ['ghost'], succeeded => ['node3'] },
    '  failed + succeeded';
is_deeply [ grep { /run_|rehab/ } events($id) ],
    [ 'run_start ghost', 'rehab ghost',
      'run_complete ghost run_nacked_while_running',
      'run_start node3', 'run_complete node3 success' ],
    '  events';

# running -failed-> failed (exit status kept); terminal -ack_run-> abort
# (client_died_while_running); ready -ack_commit-> crashed + abort
$id = running_job();
say_($g, 'ack_run', $id);
wait_nodes($id, { running => ['ghost'], ready => ['node3'] });
say_($g, 'failed', $id, exit_status => 3);
ok expect($g, 'ack', $id), 'failed: acked';
wait_nodes($id, { failed => ['ghost'], ready => ['node3'] });
say_($g, 'ack_run', $id);
ok expect($g, 'abort', $id), 'ack_run of a finished node: told to abort';
say_($p3, 'ack_commit', $id);
ok expect($p3, 'abort', $id), 'ack_commit while running: told to abort';
$job = $stack->wait_job($id, 10);
is_deeply $job->{nodes}, { failed => ['ghost'], crashed => ['node3'] },
    '  failed + crashed';
is_deeply [ lines_of("SELECT exit_status FROM pushjobs.job_nodes "
                     . "WHERE job_id = '$id' AND node_name = 'ghost'") ],
    [ 3 ], '  exit status 3 kept';
is_deeply [ grep { /run_complete|rehab/ } events($id) ],
    [ 'run_complete ghost failure',
      'rehab ghost', 'run_complete ghost client_died_while_running',
      'rehab node3', 'run_complete node3 crashed' ],
    '  events';

# running -aborted (never asked)-> crashed, acked, no abort; ready
# -nack_commit-> crashed + abort
$id = running_job();
say_($g, 'ack_run', $id);
wait_nodes($id, { running => ['ghost'], ready => ['node3'] });
say_($g, 'aborted', $id);
is_deeply [ sync($g) ], [ "ack $id" ], 'unasked "aborted": acked, no abort';
say_($p3, 'nack_commit', $id);
ok expect($p3, 'abort', $id), 'nack_commit while running: told to abort';
$job = $stack->wait_job($id, 10);
is $job->{status}, 'complete', '  job complete';
is_deeply $job->{nodes}, { crashed => [ 'ghost', 'node3' ] }, '  both crashed';

# run timer (the sweeper): ready and running nodes timed_out, told to abort;
# what they answer is acked and changes nothing
$id = running_job(run_timeout => 1);
say_($g, 'ack_run', $id);
ok expect($g, 'abort', $id), 'run_timeout: the running node told to abort';
ok expect($p3, 'abort', $id), '  the ready node too';
$job = $stack->wait_job($id, 10);
is $job->{status}, 'timed_out', '  job timed_out';
is_deeply $job->{nodes}, { timed_out => [ 'ghost', 'node3' ] },
    '  both timed_out';
say_($g, 'aborted', $id);
ok expect($g, 'ack', $id), '  "aborted" acked';
say_($p3, 'succeeded', $id, exit_status => 0);
ok expect($p3, 'ack', $id), '  a late result acked';
is_deeply nodes_of($id), { timed_out => [ 'ghost', 'node3' ] },
    '  and ignored';
is_deeply [ grep { !/quorum_vote/ } events($id) ],
    [ 'start', 'quorum_succeeded', 'run_start ghost',
      'job_complete timed_out' ], '  events';

# --- messages for jobs the node is not part of ----------------------------

my $unknown = join '', map { sprintf '%x', int rand 16 } 1 .. 32;
say_($g, 'succeeded', $unknown, exit_status => 0,
     stdout => encode_base64('x', ''), stderr => '');
ok expect($g, 'ack', $unknown), 'a result for an unknown job: acked';
say_($g, 'failed', $unknown, exit_status => 1);
ok expect($g, 'ack', $unknown), '  and again';
say_($g, 'ack_run', $unknown);
ok expect($g, 'abort', $unknown), 'ack_run for an unknown job: abort';
is_deeply [ lines_of("SELECT count(*) FROM pushjobs.job_nodes "
                     . "WHERE job_id = '$unknown'") ], [ 0 ],
    '  nothing stored';

my $other = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($other, 20)->{status}, 'complete', 'a job of node1';
say_($g, 'ack_run', $other);
ok expect($g, 'abort', $other),
    'ack_run for a job the node is not part of: abort';
say_($g, 'succeeded', $other, exit_status => 0);
ok expect($g, 'ack', $other), '  a result for it: acked';
is_deeply nodes_of($other), { succeeded => ['node1'] }, '  the job unchanged';

# --- channels lost mid-run ------------------------------------------------

# no reconnect: crashed after the node-lost timeout
$id = running_job();
say_($g, 'ack_run', $id);
say_($p3, 'ack_run', $id);
wait_nodes($id, { running => [ 'ghost', 'node3' ] });
$g->close;
say_($p3, 'succeeded', $id, exit_status => 0);
my $t0 = time;
$job = $stack->wait_job($id, 10);
my $took = time - $t0;
is $job->{status}, 'complete', 'channel lost mid-run: job complete';
is_deeply $job->{nodes}, { crashed => ['ghost'], succeeded => ['node3'] },
    '  the lost node crashed';
cmp_ok $took, '>', 2, '  after the node-lost timeout';
is_deeply [ grep { /ghost/ } events($id) ],
    [ 'quorum_vote ghost success', 'run_start ghost', 'rehab ghost',
      'run_complete ghost crashed' ], '  events';

# the lost node reconnects later, still holding the job: told to abort
$g = peer('ghost', { job_id => $id, state => 'running' });
ok expect($g, 'abort', $id), '  reconnecting later: told to abort';

# reconnect within the node-lost timeout with the job running: the job goes
# on, past the timeout, and the result counts
$id = running_job();
say_($g, 'ack_run', $id);
say_($p3, 'ack_run', $id);
wait_nodes($id, { running => [ 'ghost', 'node3' ] });
$g->close;
$g = peer('ghost', { job_id => $id, state => 'running' });
ok !PushJobs::Stack::wait_for(4.5, sub { nodes_of($id)->{crashed} }, 0.2),
    'reconnect within the node-lost timeout: not crashed';
say_($g, 'succeeded', $id, exit_status => 0);
my ($m, @before) = expect($g, 'ack', $id);
ok $m, '  its result acked';
is_deeply [ grep { $_->{type} eq 'abort' } @before ], [], '  no abort';
say_($p3, 'succeeded', $id, exit_status => 0);
$job = $stack->wait_job($id, 10);
is $job->{status}, 'complete', '  job complete';
is_deeply $job->{nodes}, { succeeded => [ 'ghost', 'node3' ] },
    '  both succeeded';

# reconnect with the result spooled: hello "finished", then the report
$id = running_job();
say_($g, 'ack_run', $id);
say_($p3, 'ack_run', $id);
wait_nodes($id, { running => [ 'ghost', 'node3' ] });
$g->close;
$g = peer('ghost', { job_id => $id, state => 'finished' });
say_($g, 'failed', $id, exit_status => 2);
ok expect($g, 'ack', $id), 'spooled report after hello "finished": acked';
is_deeply wait_nodes($id, { failed => ['ghost'], running => ['node3'] }),
    { failed => ['ghost'], running => ['node3'] }, '  and applied';
say_($p3, 'succeeded', $id, exit_status => 0);
is $stack->wait_job($id, 10)->{status}, 'complete', '  job complete';

# reconnect holding the commit while the job runs: the run is sent again
$id = running_job();
$g->close;
$g = peer('ghost', { job_id => $id, state => 'committed' });
ok expect($g, 'run', $id), 'hello "committed" in a running job: run again';
say_($g, 'ack_run', $id);
say_($g, 'succeeded', $id, exit_status => 0);
ok expect($g, 'ack', $id), '  result acked';

# reconnect without the job (the agent restarted): crashed at once, abort
$p3->close;
$p3 = peer('node3');
ok expect($p3, 'abort', $id), 'hello without the running job: abort';
$job = $stack->wait_job($id, 10);
is_deeply $job->{nodes}, { succeeded => ['ghost'], crashed => ['node3'] },
    '  crashed';

# a hello answered late: the agent's hello goes to PostgreSQL in one batch
# (agent_hello()), its answers to what it is sent in another (node_inputs());
# a commit sent before its hello was answered could be acked, the ack stored
# first, and the hello, which lists no such job, then crashed the node
# ("down").  No commit, run or abort goes to a session before its hello is
# answered.  The hello is held up by a lock on a job it lists (agent_hello()
# locks each active job of its node).
my $held = running_job();
say_($g, 'ack_run', $held);
say_($p3, 'ack_run', $held);
wait_nodes($held, { running => [ 'ghost', 'node3' ] });
my $lock = $stack->hold("SELECT 1 FROM pushjobs.jobs WHERE id = '$held' "
                        . 'FOR UPDATE;');
$g->close;
$g = peer('ghost', { job_id => $held, state => 'running' });
$id = $stack->start_job({ command => 'true', nodes => ['ghost'] });
($m, @before) = expect($g, 'commit', $id, 2);
ok !$m, 'a job while the hello waits: no commit before the hello is answered';
is_deeply nodes_of($id), { new => ['ghost'] }, '  the node still new';
$stack->release($lock);
ok expect($g, 'commit', $id), '  the commit once it is answered';
say_($g, 'ack_commit', $id);
ok expect($g, 'run', $id), '  the run';
say_($g, 'ack_run', $id);
say_($g, 'succeeded', $id, exit_status => 0);
ok expect($g, 'ack', $id), '  the result acked';
$job = $stack->wait_job($id, 10);
is_deeply $job->{nodes}, { succeeded => ['ghost'] }, '  the node succeeded';
is_deeply nodes_of($held), { running => [ 'ghost', 'node3' ] },
    '  the job the hello listed still running on it';
say_($g, 'succeeded', $held, exit_status => 0);
say_($p3, 'succeeded', $held, exit_status => 0);
is $stack->wait_job($held, 10)->{status}, 'complete', '  and completes';

$g->close;
$p3->close;

# --- real agents ----------------------------------------------------------

# run_timeout: timed_out.  The agent ends the process (told to abort by the
# server, or on its own at run_timeout: its "failed" report must not turn
# the job complete) and takes the next job
$id = $stack->start_job({ command => 'sleep 30', run_timeout => 2,
                          nodes => ['node1'] });
$job = $stack->wait_job($id, 15);
is $job->{status}, 'timed_out', 'run_timeout: job timed_out';
is_deeply $job->{nodes}, { timed_out => ['node1'] }, '  node timed_out';
is_deeply [ events($id) ],
    [ 'start', 'quorum_vote node1 success', 'quorum_succeeded',
      'run_start node1', 'job_complete timed_out' ],
    '  events: no per-node completion';
my $log = $stack->agent_log('node1');
ok PushJobs::Stack::wait_for(15, sub {
    PushJobs::Stack::slurp($log) =~ /job $id: report acknowledged/;
}), '  the agent aborted the job and its report was acked';
like PushJobs::Stack::slurp($log), qr/job $id: killed by signal/,
    '  the process was ended';
is_deeply nodes_of($id), { timed_out => ['node1'] }, '  still timed_out';
$id = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($id, 15)->{status}, 'complete', '  node1 free again';

# an agent that crashed mid-run and was started again: its hello does not
# hold the job (and no report is spooled): crashed.  (Its process, in a
# process group of its own, ends by itself.)
$id = $stack->start_job({ command => 'sleep 4', nodes => ['node2'] });
ok PushJobs::Stack::wait_for(10, sub { nodes_of($id)->{running} }),
    'node2 running';
$stack->stop_agent('node2', 'KILL');
$stack->start_agent('node2');
$job = $stack->wait_job($id, 15);
is $job->{status}, 'complete', 'agent restarted mid-run: job complete';
is_deeply $job->{nodes}, { crashed => ['node2'] }, '  node crashed';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
