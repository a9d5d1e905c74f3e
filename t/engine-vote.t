# The job engine's voting phase (contract §3.3, §3.4 voting table): every
# transition an agent can cause, driven by real agents where that is natural
# and by scripted peers (the agent-less client "ghost", and "node3" once its
# harness agent is stopped) for what a real agent never does.  Checks the
# job document, the event rows and the aborts ("rehab") the server sends.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;
use PushJobs::WS;
use PushJobs::Engine;
use PushJobs::Fault qw(listen_cut listen_restore);

my $json = PushJobs::Stack::json();

# voting timeout longer than the node-lost timeout, so that "down" and
# "voting_timeout" can be told apart; pings rare enough that a scripted peer
# the test is not reading from at the moment keeps its channel
my $stack = PushJobs::Stack->new(agents => 3, workers => 2,
    nginx_extra => 'pushjobs_voting_timeout 5s; '
                   . 'pushjobs_node_lost_timeout 2s; '
                   . 'pushjobs_sweep_interval 500ms; '
                   . 'pushjobs_ping_interval 60s;');
$stack->start;

my $org = $stack->org;
PushJobs::Engine->init($stack);

# --- real agents ----------------------------------------------------------

my ($n1, $n2) = ('node1', 'node2');

# a command outside the whitelist: nacked
my $id = $stack->start_job({ command => 'rm -rf /', nodes => [$n1] });
my $job = $stack->wait_job($id, 20);
is $job->{status}, 'quorum_failed', 'whitelist miss: quorum_failed';
is_deeply $job->{nodes}, { nacked => [$n1] }, '  node nacked';
is_deeply [ events($id) ],
    [ 'start', "quorum_vote $n1 failure", 'job_complete quorum_failed' ],
    '  events: start, vote failure, job_complete';

# a busy node nacks; with the default quorum the ready node ends was_ready
# and is told to abort, so that it is free again at once
my $busy = $stack->start_job({ command => 'sleep 4', nodes => [$n1] });
ok PushJobs::Stack::wait_for(10, sub {
    (nodes_of($busy)->{running} // [])->[0];
}), 'node1 busy running a job';

$id = $stack->start_job({ command => 'true', nodes => [ $n1, $n2 ] });
$job = $stack->wait_job($id, 20);
is $job->{status}, 'quorum_failed', 'busy node: quorum_failed';
is_deeply $job->{nodes}, { nacked => [$n1], was_ready => [$n2] },
    '  busy node nacked, the other was_ready';
ok PushJobs::Stack::wait_for(10, sub {
    PushJobs::Stack::slurp($stack->agent_log($n2))
        =~ /job $id: uncommitted/;
}), '  the was_ready agent was told to abort: uncommitted';

my $again = $stack->start_job({ command => 'true', nodes => [$n2] });
is $stack->wait_job($again, 20)->{status}, 'complete',
    '  and takes the next job';

# same with quorum 1 of 2: complete, nacked + succeeded
is $stack->wait_job($busy, 20)->{status}, 'complete', 'first busy job completes';
$busy = $stack->start_job({ command => 'sleep 4', nodes => [$n1] });
ok PushJobs::Stack::wait_for(10, sub {
    (nodes_of($busy)->{running} // [])->[0];
}), 'node1 busy again';
$id = $stack->start_job({ command => 'true', quorum => 1,
                          nodes => [ $n1, $n2 ] });
$job = $stack->wait_job($id, 20);
is $job->{status}, 'complete', 'busy node, quorum 1: complete';
is_deeply $job->{nodes}, { nacked => [$n1], succeeded => [$n2] },
    '  nacked + succeeded';
is $stack->wait_job($busy, 20)->{status}, 'complete', 'busy job completes';

# a node offline at job start is unavailable at once (down, rehab)
$id = $stack->start_job({ command => 'true', nodes => [ $n1, 'ghost' ] });
$job = $stack->wait_job($id, 10);
is $job->{status}, 'quorum_failed', 'offline node: quorum_failed at once';
is_deeply $job->{nodes}, { unavailable => ['ghost'], was_ready => [$n1] },
    '  offline node unavailable, the other was_ready';
is_deeply [ grep { /ghost/ } events($id) ],
    [ 'quorum_vote ghost down', 'rehab ghost' ], '  events: down, rehab';

# --- scripted peers -------------------------------------------------------

$stack->stop_agent('node3');
ok PushJobs::Stack::wait_for(10, sub { node_state('node3') eq 'offline' }),
    'node3 agent stopped';

my $g = peer('ghost');
my $p3 = peer('node3');

# new -ack-> ready; ready -ack-> ready (the same vote again: no event); ready -nack->
# unavailable + abort (lost_availibility); terminal -ack-> abort
# (client_died_while_voting); node3's late ack ends voting: quorum failed,
# node3 was_ready and told to abort
$id = $stack->start_job({ command => 'true', nodes => [ 'ghost', 'node3' ] });
my ($m) = expect($g, 'commit', $id);
ok $m, 'ghost got the commit';
is $m->{command}, 'true', '  with the command';
($m) = expect($p3, 'commit', $id);
ok $m, 'node3 got the commit';

say_($g, 'ack_commit', $id);
is_deeply wait_nodes($id, { ready => ['ghost'], new => ['node3'] }),
    { ready => ['ghost'], new => ['node3'] }, 'ack_commit: new -> ready';
say_($g, 'ack_commit', $id);
is_deeply [ sync($g) ], [], '  second ack_commit: no abort';
is_deeply [ grep { /ghost/ } events($id) ], [ 'quorum_vote ghost success' ],
    '  and no second vote (its agent re-sending its answer)';
is_deeply nodes_of($id), { ready => ['ghost'], new => ['node3'] },
    '  still ready';
say_($g, 'nack_commit', $id, reason => 'changed my mind');
is_deeply [ sync($g) ], [ "abort $id" ],
    'nack_commit after ack_commit: told to abort';
is_deeply nodes_of($id), { unavailable => ['ghost'], new => ['node3'] },
    '  ready -> unavailable';
say_($g, 'aborted', $id);
ok expect($g, 'ack', $id), '  its "aborted" is acked';
say_($g, 'ack_commit', $id);
is_deeply [ sync($g) ], [ "abort $id" ],
    'ack_commit of an unavailable node: told to abort again';
is $stack->job($id)->{status}, 'voting', '  still voting';

say_($p3, 'ack_commit', $id);
($m) = expect($p3, 'abort', $id);
ok $m, 'quorum failed: the ready node is told to abort';
$job = $stack->wait_job($id, 10);
is $job->{status}, 'quorum_failed', '  job quorum_failed';
is_deeply $job->{nodes}, { unavailable => ['ghost'], was_ready => ['node3'] },
    '  unavailable + was_ready';
is_deeply [ events($id) ],
    [ 'start',
      'quorum_vote ghost success',
      'quorum_vote ghost lost_availibility', 'rehab ghost',
      'quorum_vote ghost client_died_while_voting', 'rehab ghost',
      'quorum_vote node3 success',
      'job_complete quorum_failed' ],
    '  events of every voting transition';

# a message other than a vote while voting: unavailable + abort, no vote
# event; a nack: nacked
$id = $stack->start_job({ command => 'true', nodes => [ 'ghost', 'node3' ] });
expect($g, 'commit', $id);
expect($p3, 'commit', $id);
say_($g, 'ack_run', $id);
is_deeply [ sync($g) ], [ "abort $id" ],
    'ack_run while voting: told to abort';
say_($p3, 'nack_commit', $id, reason => 'busy');
$job = $stack->wait_job($id, 10);
is $job->{status}, 'quorum_failed', '  quorum_failed';
is_deeply $job->{nodes}, { unavailable => ['ghost'], nacked => ['node3'] },
    '  unavailable + nacked';
is_deeply [ events($id) ],
    [ 'start', 'rehab ghost', 'quorum_vote node3 failure',
      'job_complete quorum_failed' ],
    '  events: rehab without a vote, then the nack';
is_deeply [ sync($p3) ], [], '  a nacked node is not told to abort';

# a commit ignored: unavailable at the voting timeout (no rehab event),
# and the node is told to abort
$id = $stack->start_job({ command => 'true', nodes => [ 'ghost', 'node3' ] });
expect($g, 'commit', $id);
expect($p3, 'commit', $id);
say_($p3, 'ack_commit', $id);
wait_nodes($id, { new => ['ghost'], ready => ['node3'] });
($m) = expect($g, 'abort', $id, 15);
ok $m, 'commit ignored: told to abort at the voting timeout';
$job = $stack->wait_job($id, 10);
is $job->{status}, 'quorum_failed', '  quorum_failed';
is_deeply $job->{nodes}, { unavailable => ['ghost'], was_ready => ['node3'] },
    '  unavailable + was_ready';
is_deeply [ events($id) ],
    [ 'start', 'quorum_vote node3 success',
      'quorum_vote ghost voting_timeout', 'job_complete quorum_failed' ],
    '  events: voting_timeout, no rehab';
ok expect($p3, 'abort', $id), '  node3 told to abort';

# the same with quorum 1: the job runs without the silent node, which is
# told to abort at the voting timeout, not at the end of the job
$id = $stack->start_job({ command => 'true', quorum => 1,
                          nodes => [ 'ghost', 'node3' ] });
expect($g, 'commit', $id);
expect($p3, 'commit', $id);
say_($p3, 'ack_commit', $id);
($m) = expect($g, 'abort', $id, 15);
ok $m, 'quorum reached, commit ignored: told to abort';
($m) = expect($p3, 'run', $id);
ok $m, '  the ready node is told to run';
is $stack->job($id)->{status}, 'running', '  while the job runs';
say_($p3, 'ack_run', $id);
say_($p3, 'succeeded', $id, exit_status => 0);
ok expect($p3, 'ack', $id), '  result acked';
$job = $stack->wait_job($id, 10);
is $job->{status}, 'complete', '  job complete';
is_deeply $job->{nodes}, { unavailable => ['ghost'], succeeded => ['node3'] },
    '  unavailable + succeeded';

# disconnect while voting, no reconnect: down after the node-lost timeout,
# before the voting timeout
$id = $stack->start_job({ command => 'true', nodes => [ 'ghost', 'node3' ] });
expect($g, 'commit', $id);
expect($p3, 'commit', $id);
say_($g, 'ack_commit', $id);
wait_nodes($id, { ready => ['ghost'], new => ['node3'] });
$g->close;
$job = $stack->wait_job($id, 10);
is $job->{status}, 'quorum_failed', 'disconnect while voting: quorum_failed';
is_deeply $job->{nodes}, { unavailable => [ 'ghost', 'node3' ] },
    '  both unavailable';
is_deeply [ grep { /ghost/ } events($id) ],
    [ 'quorum_vote ghost success', 'quorum_vote ghost down', 'rehab ghost' ],
    '  the lost node: down + rehab';
ok((grep { $_ eq 'quorum_vote node3 voting_timeout' } events($id)),
   '  the silent node: voting_timeout');

# disconnect while voting, reconnect within the node-lost timeout: the
# hello decides.  No job held: the commit is sent again.  "committed":
# counts as the ack.
$g = peer('ghost');
$id = $stack->start_job({ command => 'true', nodes => [ 'ghost', 'node3' ] });
expect($g, 'commit', $id);
expect($p3, 'commit', $id);
$g->close;
$g = peer('ghost');
($m) = expect($g, 'commit', $id);
ok $m, 'reconnect without the job: commit sent again';
$p3->close;
$p3 = peer('node3', { job_id => $id, state => 'committed' });
is_deeply wait_nodes($id, { ready => ['node3'], new => ['ghost'] }),
    { ready => ['node3'], new => ['ghost'] },
    'reconnect holding the commit: counts as ack_commit';
say_($g, 'ack_commit', $id);
($m) = expect($g, 'run', $id);
ok $m, '  voting ends, run sent';
($m) = expect($p3, 'run', $id);
ok $m, '  to both';
for ($g, $p3) {
    say_($_, 'ack_run', $id);
    say_($_, 'succeeded', $id, exit_status => 0);
}
$job = $stack->wait_job($id, 10);
is $job->{status}, 'complete', '  job complete';
is_deeply $job->{nodes}, { succeeded => [ 'ghost', 'node3' ] },
    '  both succeeded';
ok !(grep { /down|rehab/ } events($id)), '  nobody was marked down';

# reconnect during voting reporting the job running: down -> unavailable
$id = $stack->start_job({ command => 'true', nodes => [ 'ghost', 'node3' ] });
expect($g, 'commit', $id);
expect($p3, 'commit', $id);
$g->close;
$g = peer('ghost', { job_id => $id, state => 'running' });
($m) = expect($g, 'abort', $id);
ok $m, 'hello "running" while voting: told to abort';
is_deeply wait_nodes($id, { unavailable => ['ghost'], new => ['node3'] }),
    { unavailable => ['ghost'], new => ['node3'] }, '  unavailable';
say_($p3, 'nack_commit', $id);
is $stack->wait_job($id, 10)->{status}, 'quorum_failed', '  quorum_failed';

# three commits offered at once (an agent back from a pause or a
# reconnect with jobs waiting; found by t/fault-random.t): the agent accepts
# the first and refuses the others as busy, and the channel must still know
# the first, to send its run (and its abort)
# (on this channel, and on a new one: this one still remembers the job
# it was told to abort above, which ghost never answered)
for my $channel ('a channel with an abort pending', 'a new channel') {
    if ($channel eq 'a new channel') {
        $g->close;
        $g = peer('ghost');
    }
    my @three = map {
        $stack->start_job({ command => 'true', nodes => ['ghost'],
                            run_timeout => 30 })
    } 1 .. 3;
    ok !(grep { !expect($g, 'commit', $_) } @three),
        "three commits offered to $channel";
    say_($g, 'ack_commit', $three[0]);
    say_($g, 'nack_commit', $_, reason => 'busy') for @three[1, 2];
    ($m) = expect($g, 'run', $three[0], 10);
    ok $m, '  the first, accepted, gets its run';
    say_($g, 'ack_run', $three[0]);
    say_($g, 'succeeded', $three[0], exit_status => 0);
    ok expect($g, 'ack', $three[0], 10), '  its result is acked';
    is $stack->wait_job($three[0], 10)->{status}, 'complete',
        '  and it completes';
    is $stack->wait_job($_, 10)->{status}, 'quorum_failed',
        '  the refused ones fail their quorum' for @three[1, 2];
}

# a stop the workers missed: a node times out in voting (rehab: abort)
# while the LISTEN connections are down, so that neither the abort nor the
# others' run reaches a worker; once they listen again they catch up on
# both (recent_jobs()), else the silent node's agent would hold the commit
# of a job that went on without it (and nack every job as busy)
$id = $stack->start_job({ command => 'true', nodes => [ 'ghost', $n2 ],
                          quorum => 1 });
ok expect($g, 'commit', $id), 'a stop missed: ghost got the commit';
wait_nodes($id, { new => ['ghost'], ready => [$n2] });
my $cut = listen_cut($stack);
ok $cut, '  the LISTEN connections cut';
is_deeply wait_nodes($id, { unavailable => ['ghost'], ready => [$n2] }),
    { unavailable => ['ghost'], ready => [$n2] },
    '  ghost timed out in voting, its abort and the run unsent';
ok listen_restore($stack, $cut), '  the workers listen again';
ok expect($g, 'abort', $id, 15), '  ghost is told to abort';
is $stack->wait_job($id, 15)->{status}, 'complete', '  and the job runs';

$g->close;
$p3->close;

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
