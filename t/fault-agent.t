# An agent that dies (kill -9: a crash, the OOM killer) or stops answering
# (SIGSTOP) while its node runs a job:
#
#   (a) killed mid-run and restarted before pushjobs_node_lost_timeout: the
#       job's process group, left running by the dead agent, is ended by
#       the restarted one (from its record in the spool), which does not
#       hold the job any more: the server records the node crashed at its
#       hello, once;
#   (c) stopped past the ping interval: the server sees the node offline, a
#       job posted meanwhile counts it unavailable; continued, it
#       reconnects, its running job ends with one result, and later jobs
#       run on it;
#   (d) killed mid-run, and the job's group leader gone too: the restarted
#       agent finds the rest of the group by the job's id in their
#       environment and ends it;
#   (e) the same when nothing left shows the job's id: the agent cannot
#       tell the group from one that reuses its number, and leaves it;
#   (b) killed mid-run and restarted after pushjobs_node_lost_timeout (the
#       server has marked the node crashed): the restarted agent still
#       ends the orphaned group, and nothing about the job changes.
#
# Each part checks the fault suite's invariants (t/lib/PushJobs/Fault.pm).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use POSIX qw(WNOHANG);
use Test::More;
use Time::HiRes qw(time);
use PushJobs::Stack;
use PushJobs::Fault qw(check_invariants timed);

my $tmp = tempdir('pushjobs-fault-agent-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $tmp;
# a process tree: the script and two sleeps, all in the job's group
PushJobs::Stack::spew("$tmp/tree", "#!/bin/sh\nsleep 30 & sleep 31; wait\n",
                      0755);
# the same tree below a shell that hides the job's environment
PushJobs::Stack::spew("$tmp/hidden",
    "#!/bin/sh\nenv -i /bin/sh -c 'sleep 32 & sleep 33; wait'\n", 0755);

my %whitelist = (tree => "$tmp/tree", hidden => "$tmp/hidden",
                 nap => 'sleep 8', true => 'true');

# The live (not zombie) processes of a process group, read from /proc.
sub group_live {
    my ($pgid) = @_;
    my @live;
    for my $stat (glob '/proc/[0-9]*/stat') {
        my $s = PushJobs::Stack::slurp($stat) or next;
        # the command name may hold anything: the last ") " ends it
        $s =~ /^(\d+) \(.*\) (\S) -?\d+ (-?\d+)/s or next;
        push @live, $1 if $3 == $pgid && $2 ne 'Z' && $2 ne 'X';
    }
    return @live;
}

# The process group the agent recorded for a job (SPOOL/JOBID.run).
sub recorded_pgid {
    my ($s, $node, $id) = @_;
    my $rec = PushJobs::Stack::slurp($s->agent_dir($node) . "/spool/$id.run");
    return $rec =~ /^pgid (\d+)$/m ? $1 : undef;
}

sub spool_files {
    my ($s, $node) = @_;
    return map { s{.*/}{}r } glob($s->agent_dir($node) . "/spool/*");
}

sub node_status {
    my ($s, $node) = @_;
    my $res = $s->request('GET', '/organizations/' . $s->org
                                 . "/pushy/node_states/$node");
    return $res->{status} == 200 ? $res->{json}{status} : '';
}

sub run_completes {
    my ($s, $id, $node) = @_;
    my $rows = $s->psql('pushjobs', qq{
        SELECT data::json->>'status' FROM pushjobs.job_events
         WHERE job_id = '$id' AND name = 'run_complete'
           AND data::json->>'node' = '$node' ORDER BY seq});
    return grep { length } split /\n/, $rows;
}

sub event_count {
    my ($s, $id) = @_;
    my $n = $s->psql('pushjobs',
        "SELECT count(*) FROM pushjobs.job_events WHERE job_id = '$id'");
    chomp $n;
    return $n;
}

# Starts the tree on NODE and waits until its three processes run; returns
# the job id and the recorded process group.
sub start_tree {
    my ($s, $node, $command, $procs) = @_;
    my $id = $s->start_job({ command => $command // 'tree',
                             nodes => [$node] });
    my $pgid;
    ok PushJobs::Stack::wait_for(30, sub {
        my $j = $s->job($id);
        $pgid = recorded_pgid($s, $node, $id);
        $j && ($j->{nodes}{running} // [])->[0] && $pgid
           && group_live($pgid) >= ($procs // 3);
    }, 0.1), "job running, its process group recorded in the spool ($id.run)";
    return ($id, $pgid);
}

# The test process becomes a subreaper: the orphans of a killed agent are
# then its children, so that it can reap a job's group leader and leave
# the rest of the group without it (where PID 1 does not reap, a dead
# leader stays a zombie and still shows its start time).
sub subreaper {
    my %prctl = (x86_64 => 157, aarch64 => 167);
    my $nr = $prctl{ (POSIX::uname())[4] } or return 0;
    return syscall($nr, 36, 1, 0, 0, 0) == 0;    # PR_SET_CHILD_SUBREAPER
}

# --- (a) and (c): node_lost_timeout far away (60 s) -----------------------

my $s = PushJobs::Stack->new(
    agents => 2,
    whitelist => \%whitelist,
    whitelist_regex => [],
    client_rb_extra => "kill_grace_period 2\n",
    nginx_extra => 'pushjobs_node_lost_timeout 60s; '
                   . 'pushjobs_ping_interval 2s;',
);
$s->start;

my $org = $s->org;
my @ids;

note '(a) kill -9 mid-run, restart before pushjobs_node_lost_timeout';
{
    my ($id, $pgid) = start_tree($s, 'node1');
    push @ids, $id;

    $s->stop_agent('node1', 'KILL');
    ok scalar(group_live($pgid)) >= 3,
        'the dead agent left its job\'s process tree running';
    my ($dt, $j) = timed(sub { $s->job($id) });
    is $j->{status}, 'running', 'the server still waits for it';
    ok $dt < 5, 'the REST API answers at once meanwhile';

    my $t0 = time;
    $s->start_agent('node1');
    ok PushJobs::Stack::wait_for(20, sub { !group_live($pgid) }, 0.1),
        'the restarted agent ended the orphaned process group';
    my $log = PushJobs::Stack::slurp($s->agent_log('node1'));
    like $log, qr/job $id: its process group $pgid \(3 processes\) outlived/,
        'and said so';

    my $job = $s->wait_job($id, 40);
    ok time - $t0 < 45, 'the job ended well before node_lost_timeout (60 s)';
    is $job->{status}, 'complete', 'job complete';
    is_deeply $job->{nodes}, { crashed => ['node1'] },
        'node crashed: its agent came back without the job';
    is_deeply [ run_completes($s, $id, 'node1') ], ['crashed'],
        'one run_complete for the node';
    ok PushJobs::Stack::wait_for(10, sub { !spool_files($s, 'node1') }),
        'nothing left in the spool (no record, no report)';

    ok $s->wait_online(['node1'], 30), 'node1 online again';
    my $id2 = $s->start_job({ command => 'true', nodes => ['node1'] });
    push @ids, $id2;
    is_deeply $s->wait_job($id2, 30)->{nodes}, { succeeded => ['node1'] },
        'a later job runs on the restarted agent';
    ok PushJobs::Stack::wait_for(10, sub { !spool_files($s, 'node1') }),
        'a job that ends normally leaves no record behind';

    is_deeply [ check_invariants($s, [ $id, $id2 ]) ], [], 'invariants hold';
}

note '(c) SIGSTOP past the ping interval, then SIGCONT';
{
    my $id = $s->start_job({ command => 'nap', nodes => ['node1'] });
    push @ids, $id;
    ok PushJobs::Stack::wait_for(20, sub {
        (($s->job($id) // {})->{nodes}{running} // [])->[0] }, 0.1),
        'a job runs on node1';

    my $agent = $s->{procs}{'agent:node1'};
    # the agent's two processes (privilege separation): its process group
    kill 'STOP', -$agent;
    my $t0 = time;
    ok PushJobs::Stack::wait_for(30, sub {
        node_status($s, 'node1') eq 'offline' }, 0.2),
        'the server sees the stopped agent offline';
    ok time - $t0 < 20, 'within a few ping intervals (2 s)';

    my ($dt, $id3) = timed(sub {
        $s->start_job({ command => 'true', nodes => [ 'node1', 'node2' ],
                        quorum => 1 }) });
    push @ids, $id3;
    ok $dt < 5, 'the REST API answers at once meanwhile';
    is_deeply $s->wait_job($id3, 30)->{nodes},
        { unavailable => ['node1'], succeeded => ['node2'] },
        'a job posted meanwhile counts node1 unavailable';

    kill 'CONT', -$agent;
    ok PushJobs::Stack::wait_for(30, sub {
        node_status($s, 'node1') eq 'online' }, 0.2),
        'continued, the agent reconnects';

    my $job = $s->wait_job($id, 40);
    is_deeply $job->{nodes}, { succeeded => ['node1'] },
        'the job that ran meanwhile ends with its result';
    is_deeply [ run_completes($s, $id, 'node1') ], ['success'],
        'recorded once';

    my $id4 = $s->start_job({ command => 'true', nodes => ['node1'] });
    push @ids, $id4;
    is_deeply $s->wait_job($id4, 30)->{nodes}, { succeeded => ['node1'] },
        'later jobs run on it';

    is_deeply [ check_invariants($s, [ $id, $id3, $id4 ]) ], [],
        'invariants hold';
}

SKIP: {
    skip 'no PR_SET_CHILD_SUBREAPER here', 14 unless subreaper();

    note '(d) kill -9 mid-run, the group\'s leader gone too, then restart';
    my ($id, $pgid) = start_tree($s, 'node1');
    push @ids, $id;
    $s->stop_agent('node1', 'KILL');
    kill 'KILL', $pgid;
    ok PushJobs::Stack::wait_for(10, sub { waitpid($pgid, WNOHANG) == $pgid }),
        'the group\'s leader is dead and reaped';
    is scalar(group_live($pgid)), 2, 'its two sleeps run on in its group';

    $s->start_agent('node1');
    ok PushJobs::Stack::wait_for(20, sub { !group_live($pgid) }, 0.1),
        'the restarted agent ended them (the job\'s id in their environment)';
    like PushJobs::Stack::slurp($s->agent_log('node1')),
        qr/job $id: its process group $pgid \(2 processes\) outlived/,
        'and said so';
    is_deeply $s->wait_job($id, 40)->{nodes}, { crashed => ['node1'] },
        'node crashed';
    ok $s->wait_online(['node1'], 30), 'node1 online again';

    note '(e) the same, when no process left shows the job\'s id';
    ($id, $pgid) = start_tree($s, 'node1', 'hidden', 4);
    push @ids, $id;
    $s->stop_agent('node1', 'KILL');
    kill 'KILL', $pgid;
    ok PushJobs::Stack::wait_for(10, sub { waitpid($pgid, WNOHANG) == $pgid }),
        'the group\'s leader is dead and reaped';
    my @left = group_live($pgid);
    is scalar(@left), 3, 'the rest of its group runs on';

    $s->start_agent('node1');
    ok PushJobs::Stack::wait_for(20, sub {
        PushJobs::Stack::slurp($s->agent_log('node1'))
            =~ /job $id: process group $pgid has 3 processes that cannot be /
    }, 0.1), 'the restarted agent does not signal what it cannot show is '
             . 'the job\'s';
    is_deeply [ group_live($pgid) ], \@left, 'they were left alone';
    kill 'KILL', -$pgid;
    ok PushJobs::Stack::wait_for(10, sub { !group_live($pgid) }),
        '(ended by the test)';
    is_deeply $s->wait_job($id, 40)->{nodes}, { crashed => ['node1'] },
        'node crashed all the same';
    $s->wait_online(['node1'], 30);
}

is_deeply [ check_invariants($s, \@ids) ], [], 'invariants hold for all jobs';
$s->stop;

# --- (b): node_lost_timeout short (3 s) -----------------------------------

note '(b) kill -9 mid-run, restart after pushjobs_node_lost_timeout';
$s = PushJobs::Stack->new(
    agents => 1,
    whitelist => \%whitelist,
    whitelist_regex => [],
    client_rb_extra => "kill_grace_period 2\n",
    nginx_extra => 'pushjobs_node_lost_timeout 3s; '
                   . 'pushjobs_ping_interval 2s;',
);
$s->start;
{
    my ($id, $pgid) = start_tree($s, 'node1');

    $s->stop_agent('node1', 'KILL');
    my $job = $s->wait_job($id, 40);
    is_deeply $job->{nodes}, { crashed => ['node1'] },
        'after node_lost_timeout the server marked the node crashed';
    ok scalar(group_live($pgid)) >= 3,
        'while the job\'s process tree ran on, unsupervised';
    is_deeply [ run_completes($s, $id, 'node1') ], ['crashed'],
        'one run_complete';
    my $events = event_count($s, $id);

    $s->start_agent('node1');
    ok PushJobs::Stack::wait_for(20, sub { !group_live($pgid) }, 0.1),
        'the restarted agent ended the orphaned process group';
    ok $s->wait_online(['node1'], 30), 'node1 online again';
    ok PushJobs::Stack::wait_for(10, sub { !spool_files($s, 'node1') }),
        'nothing left in the spool';

    # a job after the restart: once it is done, the hello and anything the
    # agent said about the old job have been handled
    my $id2 = $s->start_job({ command => 'true', nodes => ['node1'] });
    is_deeply $s->wait_job($id2, 30)->{nodes}, { succeeded => ['node1'] },
        'a later job runs on the restarted agent';

    $job = $s->job($id);
    is $job->{status}, 'complete', 'the old job is still complete';
    is_deeply $job->{nodes}, { crashed => ['node1'] }, 'its node still crashed';
    is event_count($s, $id), $events, 'and it has no new event';
    is_deeply [ check_invariants($s, [ $id, $id2 ]) ], [], 'invariants hold';
}
$s->stop;

done_testing;
