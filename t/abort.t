# Aborting a job (POST /organizations/ORG/pushy/jobs/ID/abort): the whole
# job or some of its nodes, graceful or forced, while voting or running,
# repeated, with an agent gone; who may abort, and what is refused.
# Real agents show that the command's processes end; a fake agent on the
# websocket ("ghost") shows what reaches the wire, force flag included.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;
use PushJobs::WS;

my $json = PushJobs::Stack::json();

my $stack = PushJobs::Stack->new(agents => 3, workers => 2,
    nginx_extra => 'pushjobs_node_lost_timeout 2s;');
$stack->start;

my $org = $stack->org;
my @nodes = $stack->agent_names;
my $hello = '{"type":"hello","v":1,"agent":"abort.t","jobs":[]}';

sub abort_job {
    my ($id, $body, %a) = @_;
    return $stack->request('POST', "/organizations/$org/pushy/jobs/$id/abort",
                           (defined $body ? (body => $body) : ()), %a);
}

# Processes running "sleep SECS" below an agent's process, from /proc.
sub sleeps_of {
    my ($node, $secs) = @_;
    my $agent = $stack->{procs}{"agent:$node"} or return ();
    my @found;
    for my $dir (glob '/proc/[0-9]*') {
        my ($pid) = $dir =~ m{(\d+)$};
        open my $fh, '<', "$dir/cmdline" or next;
        my $cmd = do { local $/; <$fh> } // '';
        next unless $cmd eq "sleep\0$secs\0";
        my $p = $pid;
        for (1 .. 8) {
            open my $st, '<', "/proc/$p/stat" or last;
            my ($ppid) = (scalar <$st>) =~ /\)\s+\S+\s+(\d+)/ or last;
            if ($ppid == $agent) {
                push @found, $pid;
                last;
            }
            last if $ppid <= 1;
            $p = $ppid;
        }
    }
    return @found;
}

sub events {
    my ($id) = @_;
    return [ map { [ split /\t/ ] } split /\n/, $stack->psql('pushjobs',
        "SELECT name, data FROM pushjobs.job_events"
        . " WHERE job_id = '$id' ORDER BY seq") ];
}

sub event_names {
    my ($id, @names) = @_;
    my %want = map { $_ => 1 } @names;
    return [ map { my $d = $json->decode($_->[1]);
                   $_->[0] . ($d->{node} ? " $d->{node}" : '')
                   . ($d->{status} ? " $d->{status}" : '') }
             grep { $want{ $_->[0] } } @{ events($id) } ];
}

sub wait_running {
    my ($id, $names, $secs) = @_;
    return PushJobs::Stack::wait_for(30, sub {
        my $job = $stack->job($id) or return 0;
        my $running = $job->{nodes}{running} // [];
        return 0 unless "@$running" eq join ' ', sort @$names;
        return !grep { !sleeps_of($_, $secs) } @$names;
    }, 0.1);
}

# The next message of a type from the fake agent (answering pings).
sub ghost_next {
    my ($ws, $type, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (time < $deadline) {
        my $text = $ws->read_text($deadline - time) // return undef;
        my $msg = eval { $json->decode($text) } or next;
        return $msg if $msg->{type} eq $type;
    }
    return undef;
}

# A `sleep 30` job on the fake agent, walked through commit and run;
# returns its id once the job shows the node running.
sub ghost_running {
    my ($ws) = @_;
    my $id = $stack->start_job({ command => 'sleep 30', nodes => ['ghost'] });
    my $msg = ghost_next($ws, 'commit');
    is $msg->{job_id}, $id, 'ghost: commit';
    ghost_send($ws, 'ack_commit', $id);
    $msg = ghost_next($ws, 'run');
    is $msg->{job_id}, $id, 'ghost: run';
    ghost_send($ws, 'ack_run', $id);
    ok PushJobs::Stack::wait_for(10, sub {
        ($stack->job($id)->{nodes}{running} // [])->[0]
    }, 0.1), 'ghost running';
    return $id;
}

sub ghost_connect {
    my ($ws, $status) = PushJobs::WS->connect($stack, 'ghost',
        extra => PushJobs::WS::frame(1, $hello));
    is $status, 101, 'fake agent "ghost" connected';
    ghost_next($ws, 'welcome');
    ok $stack->wait_online(['ghost'], 10), '  and online';
    return $ws;
}

sub ghost_send {
    my ($ws, $type, $id) = @_;
    $ws->send_text($json->encode({ type => $type, v => 1, job_id => $id }));
}


# --- the whole job, graceful: every node aborted, every process gone ----

my $id = $stack->start_job({ command => 'sleep 30', nodes => \@nodes,
                             run_timeout => 120 });
ok wait_running($id, \@nodes, 30), 'sleep 30 running on 3 agents';

my $res = abort_job($id);
is $res->{status}, 202, 'abort of a running job: 202 while nodes stop';
is $res->{json}{id}, $id, '  with the job document';
is $res->{json}{status}, 'running', '  still running until agents answer';

my $job = $stack->wait_job($id, 30);
is $job->{status}, 'aborted', 'job ends aborted';
is_deeply $job->{nodes}, { aborted => [ sort @nodes ] },
    'every node aborted' or diag explain $job;
ok PushJobs::Stack::wait_for(15, sub { !grep { sleeps_of($_, 30) } @nodes }),
    'no "sleep 30" left under any agent';

my $ev = events($id);
my ($abort_ev) = grep { $_->[0] eq 'abort' } @$ev;
ok $abort_ev, 'an "abort" event in the job feed';
my $abort_data = $json->decode($abort_ev->[1] // '{}');
is $abort_data->{user}, 'alice', '  naming who aborted';
is_deeply $abort_data->{nodes}, [ sort @nodes ], '  and the nodes';
ok !$abort_data->{force}, '  not forced';
my $names = event_names($id, qw(run_complete job_complete));
is_deeply [ sort @{$names}[0 .. 2] ],
    [ map { "run_complete $_ aborted" } sort @nodes ],
    'run_complete aborted for each node, as its agent answered';
is $names->[3], 'job_complete aborted', 'then job_complete aborted';
is scalar @$names, 4, '  and nothing else';
is $stack->psql('pushjobs', "SELECT count(*) FROM pushjobs.org_events"
                . " WHERE job_id = '$id' AND name = 'job_complete'"
                . " AND data LIKE '%aborted%'"), "1\n",
    'job_complete aborted in the org feed';

# --- idempotent: aborting an ended job changes nothing -----------------

my $nevents = @{ events($id) };
$res = abort_job($id);
is $res->{status}, 200, 'abort of an aborted job: 200';
is_deeply $res->{json}, $stack->job($id), '  the job, unchanged';
$res = abort_job($id, { force => JSON::PP::true, nodes => [ $nodes[0] ] });
is $res->{status}, 200, '  also forced, for one node';
is scalar @{ events($id) }, $nevents, '  no new event';

my $done = $stack->start_job({ command => 'true', nodes => [ $nodes[0] ] });
is $stack->wait_job($done, 30)->{status}, 'complete', 'a job that completed';
$res = abort_job($done);
is $res->{status}, 200, 'abort of a completed job: 200';
is $res->{json}{status}, 'complete', '  still complete';
is_deeply $res->{json}{nodes}, { succeeded => [ $nodes[0] ] },
    '  nodes unchanged';

# --- one node: it ends aborted, the others go on -----------------------

$id = $stack->start_job({ command => 'sleep 6', nodes => \@nodes });
ok wait_running($id, \@nodes, 6), 'sleep 6 running on 3 agents';

$res = abort_job($id, { nodes => [ $nodes[0] ] });
is $res->{status}, 202, 'abort of one node: 202';
ok PushJobs::Stack::wait_for(10, sub {
    my $j = $stack->job($id);
    $j && ($j->{nodes}{aborted} // [])->[0]
       && $j->{nodes}{aborted}[0] eq $nodes[0];
}, 0.1), '  that node aborted';
ok PushJobs::Stack::wait_for(10, sub { !sleeps_of($nodes[0], 6) }),
    '  its process gone';
is $stack->job($id)->{status}, 'running', '  while the job runs on';
ok sleeps_of($nodes[1], 6) && sleeps_of($nodes[2], 6),
    '  and the other nodes still run the command';

$job = $stack->wait_job($id, 30);
is $job->{status}, 'complete', 'job ends complete';
is_deeply $job->{nodes}, { aborted => [ $nodes[0] ],
                           succeeded => [ sort @nodes[1, 2] ] },
    'one node aborted, the others succeeded' or diag explain $job;

# naming every node the job still waits for is aborting the job
$id = $stack->start_job({ command => 'sleep 30', nodes => [ @nodes[0, 1] ] });
ok wait_running($id, [ @nodes[0, 1] ], 30), 'sleep 30 running on 2 agents';
$res = abort_job($id, { nodes => [ $nodes[0] ] });
is $res->{status}, 202, 'abort of one of them';
ok PushJobs::Stack::wait_for(10, sub {
    ($stack->job($id)->{nodes}{aborted} // [])->[0]
}, 0.1), '  aborted';
$res = abort_job($id, { nodes => [ $nodes[1] ] });
is $res->{status}, 202, 'then of the other';
$job = $stack->wait_job($id, 30);
is $job->{status}, 'aborted', 'job ends aborted: nothing was left';

# --- force: a real agent kills at once ---------------------------------

$id = $stack->start_job({ command => 'sleep 30', nodes => [ $nodes[2] ] });
ok wait_running($id, [ $nodes[2] ], 30), 'sleep 30 running';
$res = abort_job($id, { force => JSON::PP::true });
is $res->{status}, 202, 'forced abort: 202';
$job = $stack->wait_job($id, 10);
is $job->{status}, 'aborted', 'job aborted';
is_deeply $job->{nodes}, { aborted => [ $nodes[2] ] }, 'node aborted';
ok PushJobs::Stack::wait_for(5, sub { !sleeps_of($nodes[2], 30) }),
    'process gone';
($abort_ev) = grep { $_->[0] eq 'abort' } @{ events($id) };
ok $json->decode($abort_ev->[1])->{force}, 'abort event says forced';

# --- on the wire: graceful, repeated, then forced ----------------------

my $ws = ghost_connect();

$id = ghost_running($ws);
my $msg;

$res = abort_job($id);
is $res->{status}, 202, 'abort: 202';
$msg = ghost_next($ws, 'abort');
is $msg->{job_id}, $id, 'ghost: abort';
is $msg->{force}, JSON::PP::false, '  with "force": false';

$res = abort_job($id);
is $res->{status}, 202, 'abort again while the agent has not answered: 202';
is $stack->job($id)->{status}, 'running', '  job still running';

$res = abort_job($id, { force => JSON::PP::true });
is $res->{status}, 202, 'abort with force: 202';
$msg = ghost_next($ws, 'abort');
is $msg->{job_id}, $id, 'ghost: abort again';
is $msg->{force}, JSON::PP::true, '  with "force": true';

ghost_send($ws, 'aborted', $id);
$msg = ghost_next($ws, 'ack');
is $msg->{job_id}, $id, 'ghost: its "aborted" acknowledged';
$job = $stack->wait_job($id, 10);
is $job->{status}, 'aborted', 'job aborted';
is_deeply $job->{nodes}, { aborted => ['ghost'] }, 'ghost aborted';
is_deeply [ map { $_->[0] } grep { $_->[0] eq 'abort' } @{ events($id) } ],
    [ 'abort', 'abort' ], 'two abort events: the request and the force';

# --- while voting --------------------------------------------------------

$id = $stack->start_job({ command => 'sleep 30',
                          nodes => [ 'ghost', $nodes[0] ] });
$msg = ghost_next($ws, 'commit');
is $msg->{job_id}, $id, 'ghost: commit, left unanswered';
ok PushJobs::Stack::wait_for(10, sub {
    ($stack->job($id)->{nodes}{ready} // [])->[0]
}, 0.1), "$nodes[0] ready, ghost still voting";
is $stack->job($id)->{status}, 'voting', 'job voting';

$res = abort_job($id);
is $res->{status}, 200, 'abort while voting: 200, nothing to wait for';
is $res->{json}{status}, 'aborted', '  job aborted';
is_deeply $res->{json}{nodes}, { aborted => [ sort 'ghost', $nodes[0] ] },
    '  every node aborted';
$msg = ghost_next($ws, 'abort');
is $msg->{job_id}, $id, 'ghost: abort';
ghost_send($ws, 'ack_commit', $id);
ghost_send($ws, 'aborted', $id);
$msg = ghost_next($ws, 'ack');
is $msg->{job_id}, $id, 'ghost: late vote and "aborted" taken';
is_deeply event_names($id, qw(quorum_vote quorum_succeeded run_start
                              job_complete rehab)),
    [ (map { "quorum_vote $_" } "$nodes[0] success",
       sort("ghost aborted", "$nodes[0] aborted")),
      'job_complete aborted' ],
    'events: votes aborted, job_complete aborted, no run'
    or diag explain events($id);
is $stack->job($id)->{status}, 'aborted', 'job stays aborted';
ok !sleeps_of($nodes[0], 30), "$nodes[0] never ran the command";

# --- agents gone ----------------------------------------------------------

# gone before the abort: nothing to reach, aborted at once
$id = ghost_running($ws);
$ws->close;
ok PushJobs::Stack::wait_for(10, sub {
    my $r = $stack->request('GET',
                            "/organizations/$org/pushy/node_states/ghost");
    $r->{json} && $r->{json}{status} eq 'offline';
}, 0.1), 'ghost disconnected';
$res = abort_job($id);
is $res->{status}, 200, 'abort with the agent gone: 200';
is $res->{json}{status}, 'aborted', '  job aborted';
is_deeply $res->{json}{nodes}, { aborted => ['ghost'] }, '  node aborted';

# gone after the abort, before answering: aborted, not crashed
$ws = ghost_connect();
$id = ghost_running($ws);
$res = abort_job($id);
is $res->{status}, 202, 'abort: 202';
ghost_next($ws, 'abort');
$ws->close;
$job = $stack->wait_job($id, 20);
is $job->{status}, 'aborted', 'agent gone without answering: job aborted';
is_deeply $job->{nodes}, { aborted => ['ghost'] }, '  node aborted';

# --- refused ---------------------------------------------------------------

$res = abort_job('0' x 32);
is $res->{status}, 404, 'unknown job: 404';
$res = abort_job('no-such-job');
is $res->{status}, 404, 'not a job id: 404';

$res = $stack->request('GET', "/organizations/$org/pushy/jobs/$id/abort");
is $res->{status}, 405, 'GET: 405';

for my $bad (['not json', 'invalid JSON'],
             ['[1]', 'invalid JSON'],
             ['{"nodes":[]}', 'nodes must be a non-empty list of node names'],
             ['{"nodes":"node1"}',
              'nodes must be a non-empty list of node names'],
             ['{"nodes":[1]}', 'nodes must be a non-empty list of node names'],
             ['{"nodes":["node1","node1"]}', 'duplicate node name supplied'],
             ['{"force":"yes"}',
              'invalid type supplied for force (expected a boolean)'],
             ['{"bogus":true}', 'invalid key supplied'],
             ['{"nodes":["nosuch"]}', "node nosuch is not part of job $id"])
{
    $res = abort_job($id, $bad->[0]);
    is $res->{status}, 400, "body $bad->[0]: 400";
    is_deeply $res->{json}, { error => $bad->[1] }, "  $bad->[1]";
}

$stack->set_group('pushy_job_writers', users => ['alice']);

$id = $stack->start_job({ command => 'sleep 30', nodes => [ $nodes[1] ] });
ok wait_running($id, [ $nodes[1] ], 30), 'sleep 30 running';
$res = abort_job($id, undef, user => 'bob');
is $res->{status}, 403, 'abort by bob, not a writer: 403';
like $res->{json}{error}[0], qr/bob/, '  naming bob';
is $stack->job($id)->{status}, 'running', '  job still running';
$res = abort_job($id, undef, user => 'carol');
is $res->{status}, 403, 'abort by carol, not in the org: 403';
$res = abort_job($id);
is $res->{status}, 202, 'abort by alice, a writer: 202';
is $stack->wait_job($id, 30)->{status}, 'aborted', '  job aborted';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
