# Rate control (issue 13): a job's max_concurrency and max_errors, with
# real agents running a whitelisted script that sleeps and fails on the
# nodes it is told to.  Rolling in node name order with never more nodes
# in flight than the limit (read from the job's run_start / run_complete
# events), the percentage forms and their rounding, the error budget
# stopping the rollout at the right count (never-started nodes was_ready,
# the running ones finishing, the job complete, a rollout_halted event),
# abort and run_timeout during a rollout, a worker killed mid-rollout, the
# fields in the job document, the list and the start event, and the 400s.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use Test::More;
use PushJobs::Stack;
use PushJobs::Engine;
use PushJobs::Fault qw(worker_pids agent_workers kill_worker);

my $json = PushJobs::Stack::json();

# rollout FAILING SECONDS: nodes named in the comma list FAILING exit 1 at
# once, the others sleep SECONDS and exit 0
my $bin = tempdir('pushjobs-rollout-XXXXXX',
                  DIR => $ENV{PUSHJOBS_TMPDIR} || '/tmp', CLEANUP => 1);
chmod 0755, $bin;
my $script = "$bin/rollout.sh";
PushJobs::Stack::spew($script, <<'EOF');
#!/bin/sh
case ",$1," in *",$CHEF_PUSH_NODE_NAME,"*) exit 1 ;; esac
sleep "$2"
exit 0
EOF
chmod 0755, $script;

my $stack = PushJobs::Stack->new(agents => 6, workers => 2,
    whitelist_regex => [ [ '^rollout ([a-z0-9,]+) ([0-9.]+)$',
                           "$script \\1 \\2" ] ],
    nginx_extra => 'pushjobs_voting_timeout 10s; '
                   . 'pushjobs_node_lost_timeout 10s; '
                   . 'pushjobs_sweep_interval 500ms;');
$stack->start;
PushJobs::Engine->init($stack);

my $org = $stack->org;
my @all = $stack->agent_names;

sub sql { my $out = $stack->psql('pushjobs', $_[0]); chomp $out; $out }

sub post {
    my ($body) = @_;
    return $stack->request('POST', "/organizations/$org/pushy/jobs",
                           body => $body);
}

# The job's runs from its events: the highest number of nodes between
# their run_start and their run_complete at once, and the nodes in the
# order they started.
sub flight {
    my ($id) = @_;
    my (%in, @started);
    my $max = 0;
    for my $e (events($id)) {
        my ($name, $node) = split / /, $e;
        if ($name eq 'run_start') {
            $in{$node} = 1;
            push @started, $node;
        } elsif ($name eq 'run_complete') {
            delete $in{$node};
        }
        $max = keys %in if keys %in > $max;
    }
    return ($max, @started);
}

# Every k-th node started (from 0) is among the first k + LIMIT of the
# ready nodes in name order: runs are released in name order.
sub in_name_order {
    my ($limit, $ready, @started) = @_;
    my @sorted = sort @$ready;
    for my $k (0 .. $#started) {
        my @window = @sorted[0 .. ($k + $limit - 1 < $#sorted
                                   ? $k + $limit - 1 : $#sorted)];
        return 0 unless grep { $_ eq $started[$k] } @window;
    }
    return 1;
}

sub wait_available {
    ok $stack->wait_online(\@all, 30), $_[0] // 'every agent free again';
}

# After a job ended by the server (abort, run_timeout): the agents whose
# process it started have reaped it (their log says so at once before the
# job is let go), so the next job's commit finds them free, not "busy".
sub wait_reaped {
    my ($id) = @_;
    for my $node (map { (split / /)[1] } grep { /^run_start / } events($id)) {
        my $log = $stack->agent_log($node);
        ok PushJobs::Stack::wait_for(30, sub {
            PushJobs::Stack::slurp($log)
                =~ /job $id: (?:exited with|killed by signal)/ }),
            "  $node has reaped its process";
    }
}

# --- validation -------------------------------------------------------------

my $conc_err = 'invalid max_concurrency supplied (expected an integer from '
               . '1 or a percentage string from "1%" to "100%")';
my $err_err = 'invalid max_errors supplied (expected an integer from 0 or '
              . 'a percentage string from "0%" to "100%")';

for my $bad (0, -1, 1.5, '0%', '101%', '10', '%', 'x%', '1000%', ' 5%',
             JSON::PP::true, undef, [1], { n => 1 })
{
    my $res = post({ command => 'true', nodes => ['node1'],
                     max_concurrency => $bad });
    is $res->{status}, 400,
        'max_concurrency ' . $json->encode([$bad]) . ': 400';
    is_deeply $res->{json}, { error => $conc_err }, '  with its message';
}

for my $bad (-1, 0.5, '101%', '-1%', 'abc', '', JSON::PP::false, undef) {
    my $res = post({ command => 'true', nodes => ['node1'],
                     max_errors => $bad });
    is $res->{status}, 400, 'max_errors ' . $json->encode([$bad]) . ': 400';
    is_deeply $res->{json}, { error => $err_err }, '  with its message';
}

# --- the fields in the documents and the start event ------------------------

my $id = $stack->start_job({ command => 'true', nodes => [@all],
                             max_concurrency => 2, max_errors => '50%' });
my $job = $stack->wait_job($id, 30);
is $job->{status}, 'complete', 'a job with both limits completes';
is_deeply $job->{nodes}, { succeeded => [@all] }, '  every node succeeded';
is $job->{max_concurrency}, 2, '  the document shows max_concurrency as given';
is $job->{max_errors}, '50%', '  and max_errors';
my ($listed) = grep { $_->{id} eq $id }
    @{ $stack->request('GET', "/organizations/$org/pushy/jobs")->{json} };
is_deeply [ @$listed{qw(max_concurrency max_errors)} ], [ 2, '50%' ],
    '  so does the list';
my $start = $json->decode(sql("SELECT data FROM pushjobs.job_events "
                              . "WHERE job_id = '$id' AND name = 'start'"));
is_deeply [ @$start{qw(max_concurrency max_errors)} ], [ 2, '50%' ],
    '  and the start event';
is sql("SELECT concurrency_limit || ' ' || error_limit "
       . "FROM pushjobs.job_rollout WHERE job_id = '$id'"), '2 3',
    '  limits 2 and floor(6 * 50%) = 3';
my ($max) = flight($id);
ok $max <= 2, "  at most 2 nodes ran at once ($max)";

$id = $stack->start_job({ command => 'true', nodes => ['node1'] });
$job = $stack->wait_job($id, 30);
ok !exists $job->{max_concurrency} && !exists $job->{max_errors},
    'a job without them: neither field in its document';
$start = $json->decode(sql("SELECT data FROM pushjobs.job_events "
                           . "WHERE job_id = '$id' AND name = 'start'"));
ok !exists $start->{max_concurrency} && !exists $start->{max_errors},
    '  nor in its start event';
is sql("SELECT count(*) FROM pushjobs.job_rollout WHERE job_id = '$id'"), 0,
    '  nor a job_rollout row';
wait_available();

# --- rolling ------------------------------------------------------------------

$id = $stack->start_job({ command => 'rollout none 0.4', nodes => [@all],
                          max_concurrency => 1 });
$job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', 'max_concurrency 1: the job completes';
is_deeply $job->{nodes}, { succeeded => [@all] }, '  every node succeeded';
my @started;
($max, @started) = flight($id);
is $max, 1, '  one node at a time';
is_deeply \@started, [ sort @all ], '  in node name order';
my $times = sql("SELECT count(DISTINCT updated_at) FROM pushjobs.job_nodes "
                . "WHERE job_id = '$id'");
is $times, 6, '  each node ended at its own time';

$id = $stack->start_job({ command => 'rollout none 0.8',
                          nodes => [ reverse @all ],
                          max_concurrency => '34%' });
is sql("SELECT concurrency_limit FROM pushjobs.job_rollout "
       . "WHERE job_id = '$id'"), 3,
    'max_concurrency "34%" of 6 nodes: ceil(2.04) = 3';
$job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', '  the job completes';
($max, @started) = flight($id);
ok $max <= 3 && $max >= 2, "  at most 3 nodes at once ($max)";
ok in_name_order(3, \@all, @started), '  started in name order'
    or diag "@started";
is scalar(@started), 6, '  each node started once';

$id = $stack->start_job({ command => 'true', nodes => [@all],
                          max_concurrency => '1%' });
is sql("SELECT concurrency_limit FROM pushjobs.job_rollout "
       . "WHERE job_id = '$id'"), 1,
    'max_concurrency "1%" of 6 nodes: at least 1';
is $stack->wait_job($id, 60)->{status}, 'complete', '  the job completes';
is((flight($id))[0], 1, '  one node at a time');
wait_available();

# --- the error budget ---------------------------------------------------------

# node2 and node3 fail: the second failure is more than max_errors 1
$id = $stack->start_job({ command => 'rollout node2,node3 0.2',
                          nodes => [@all], max_concurrency => 1,
                          max_errors => 1 });
$job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', 'max_errors 1, 2 failures: the job completes';
is_deeply $job->{nodes}, { succeeded => ['node1'],
                           failed => [ 'node2', 'node3' ],
                           was_ready => [ 'node4', 'node5', 'node6' ] },
    '  stopped after the second failure: the rest was_ready'
    or diag explain $job;
my @ev = events($id);
is_deeply [ grep { /^run_start/ } @ev ],
    [ 'run_start node1', 'run_start node2', 'run_start node3' ],
    '  no run_start after the budget was spent';
my $halted = $json->decode(sql("SELECT data FROM pushjobs.job_events WHERE "
                               . "job_id = '$id' AND name = 'rollout_halted'")
                           || '{}');
is_deeply [ @$halted{qw(failed max_errors not_started)} ], [ 2, 1, 3 ],
    '  a rollout_halted event: 2 failed, max_errors 1, 3 not started';
is $ev[-1], 'job_complete complete', '  then job_complete';
wait_available('  the never-started agents let go of the job');

# "10%" of 6 is 0: the first failure halts; node2, running with it, finishes
$id = $stack->start_job({ command => 'rollout node1 1', nodes => [@all],
                          max_concurrency => 2, max_errors => '10%' });
$job = $stack->wait_job($id, 60);
is sql("SELECT error_limit FROM pushjobs.job_rollout "
       . "WHERE job_id = '$id'"), 0,
    'max_errors "10%" of 6 nodes: floor(0.6) = 0';
is $job->{status}, 'complete', '  the job completes';
is_deeply $job->{nodes}, { failed => ['node1'], succeeded => ['node2'],
                           was_ready => [qw(node3 node4 node5 node6)] },
    '  the first failure halts; the node running beside it finishes'
    or diag explain $job;

# without a concurrency limit every node starts at once: the event only
$id = $stack->start_job({ command => 'rollout node1,node2 0.2',
                          nodes => [@all], max_errors => 1 });
$job = $stack->wait_job($id, 60);
is_deeply $job->{nodes}, { failed => [ 'node1', 'node2' ],
                           succeeded => [qw(node3 node4 node5 node6)] },
    'max_errors without max_concurrency: every node ran';
$halted = $json->decode(sql("SELECT data FROM pushjobs.job_events WHERE "
                            . "job_id = '$id' AND name = 'rollout_halted'")
                        || '{}');
is $halted->{not_started}, 0, '  rollout_halted with nothing not started';

# within budget: nothing stops
$id = $stack->start_job({ command => 'rollout node2 0.1', nodes => [@all],
                          max_concurrency => 3, max_errors => 1 });
$job = $stack->wait_job($id, 60);
is_deeply $job->{nodes}, { failed => ['node2'],
                           succeeded => [qw(node1 node3 node4 node5 node6)] },
    'one failure within max_errors 1: every node ran';
is sql("SELECT count(*) FROM pushjobs.job_events WHERE job_id = '$id' "
       . "AND name = 'rollout_halted'"), 0, '  no rollout_halted';
wait_available();

# --- abort during a rollout ---------------------------------------------------

$id = $stack->start_job({ command => 'rollout none 30', nodes => [@all],
                          max_concurrency => 2 });
ok PushJobs::Stack::wait_for(30, sub {
    (nodes_of($id)->{running} // [])->[1] }), 'a rollout running 2 nodes';
my $res = $stack->request('POST',
                          "/organizations/$org/pushy/jobs/$id/abort");
ok $res->{status} == 200 || $res->{status} == 202, 'aborted';
$job = $stack->wait_job($id, 30);
is $job->{status}, 'aborted', '  the job ends aborted';
is_deeply $job->{nodes}, { aborted => [@all] }, '  every node aborted';
is_deeply [ sort grep { /^run_start/ } events($id) ],
    [ 'run_start node1', 'run_start node2' ], '  nothing started after it';
wait_reaped($id);
wait_available();

# --- run_timeout during a rollout ---------------------------------------------

$id = $stack->start_job({ command => 'rollout none 3', nodes => [@all],
                          max_concurrency => 1, run_timeout => 5 });
$job = $stack->wait_job($id, 30);
is $job->{status}, 'timed_out', 'run_timeout covers the whole rollout';
my $nodes = $job->{nodes};
is_deeply $nodes->{succeeded}, ['node1'], '  node1 ran to its end'
    or diag explain $job;
is_deeply $nodes->{timed_out}, [qw(node2 node3 node4 node5 node6)],
    '  the running and the waiting nodes timed_out';
wait_reaped($id);
wait_available();

# --- a worker killed mid-rollout ----------------------------------------------

$stack->expect_alerts(qr/exited on signal 9/);
$id = $stack->start_job({ command => 'rollout node4 1', nodes => [@all],
                          max_concurrency => 2, max_errors => 0 });
ok PushJobs::Stack::wait_for(30, sub {
    @{ nodes_of($id)->{running} // [] } }), 'a rollout running';
my $by = agent_workers($stack);
my $victim = $by->{node1} // (worker_pids($stack))[0];
ok kill_worker($stack, $victim), "the worker of node1's channel killed";
$job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', '  the job completes';
is_deeply $job->{nodes}{failed}, ['node4'], '  node4 failed';
is_deeply $job->{nodes}{succeeded}, [qw(node1 node2 node3)],
    '  the nodes before it succeeded, node1 too';
my @held = @{ $job->{nodes}{was_ready} // [] };
ok @held && !grep({ $_ le 'node4' } @held),
    "  the budget still halted the rollout after it: @held never ran"
    or diag explain $job;
($max) = flight($id);
ok $max <= 2, "  never more than 2 at once ($max)";
wait_available();

# --- two front ends -----------------------------------------------------------

# node4..node6 move to a second front end: each end on one releases the
# next node on the other, through PostgreSQL alone
$stack->start_nginx('fe2');
for my $n (qw(node4 node5 node6)) {
    $stack->stop_agent($n);
    $stack->start_agent($n, fe => 'fe2');
}
ok PushJobs::Stack::wait_for(30, sub {
    3 == grep { $stack->error_log('fe2')
                =~ /agent "$_" of "\Q$org\E" connected/ }
             qw(node4 node5 node6) }), 'node4..node6 on the second front end';
wait_available();

my $posted = post({ command => 'rollout node5,node6 0.3', nodes => [@all],
                    max_concurrency => 2, max_errors => 1 });
is $posted->{status}, 201, 'a rollout over both front ends';
$id = PushJobs::Stack::job_id_of($posted);
$job = $stack->wait_job($id, 60);
is_deeply $job->{nodes}, { succeeded => [qw(node1 node2 node3 node4)],
                           failed => [qw(node5 node6)] },
    '  every node ran; the second failure came with the last node'
    or diag explain $job;
($max, @started) = flight($id);
ok $max <= 2, "  never more than 2 at once ($max)";
ok in_name_order(2, \@all, @started), '  in name order' or diag "@started";

$stack->stop;
done_testing;
