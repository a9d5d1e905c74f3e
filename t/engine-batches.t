# The lock plan (sqitch change lock_plan), in PostgreSQL alone: the
# batches of agent messages of one job, as two nginx workers send them
# (node_inputs(), each in its own session), run at the same time; a node
# both batches touch is stepped again from what the first wrote; an abort
# and a run timeout wait for the batch in flight and then see what it
# wrote; the job is settled by settle_jobs() right after, or by the
# sweeper when that does not come.  Real PostgreSQL with the deployed
# plan; the module's part (a settle batch after each inputs batch) runs in
# every engine test, whose stacks have 2 workers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 0);
$stack->start_postgres;

sub sql { my $out = $stack->psql('pushjobs', $_[0]); chomp $out; $out }

# a job of the given status, its nodes in theirs (name => status)
my $next = 0;
sub job {
    my ($status, %nodes) = @_;
    my $id = sprintf '%032x', ++$next;
    sql("INSERT INTO pushjobs.jobs (id, org, command, quorum, run_timeout,"
        . " requestor, status, voting_deadline, run_deadline) VALUES"
        . " ('$id', 'o', 'true', " . scalar(keys %nodes) . ", 3600, 'u',"
        . " '$status', now() + interval '1 hour',"
        . " now() + interval '2 hours')");
    for my $n (sort keys %nodes) {
        sql("INSERT INTO pushjobs.job_nodes (job_id, org, node_name, status)"
            . " VALUES ('$id', 'o', '$n', '$nodes{$n}')");
    }
    return $id;
}

# node_inputs() of [[node, type, exit_status], ...]
sub batch {
    my ($job, @msgs) = @_;
    my $json = join ',', map {
        qq({"org":"o","node":"$_->[0]","job_id":"$job","type":"$_->[1]")
        . (defined $_->[2] ? qq(,"exit_status":$_->[2]) : '') . '}'
    } @msgs;
    return "SELECT string_agg(i || ':' || rehab, ',' ORDER BY i)"
         . " FROM pushjobs.node_inputs('[$json]')";
}

# SQL in a session of its own, in the background, named $name in
# pg_stat_activity; returns what to wait on
sub async {
    my ($name, $sql) = @_;
    my $out = $stack->dir . "/$name.out";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        $ENV{PGAPPNAME} = $name;
        open STDOUT, '>', $out or die;
        open STDERR, '>&', \*STDOUT;
        exec 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
             '-h', '127.0.0.1', '-p', $stack->{pg_port}, '-U', 'pushjobs',
             '-d', 'pushjobs', '-c', $sql or die "exec psql: $!";
    }
    return { pid => $pid, out => $out, name => $name };
}

# what the session waits for (wait_event of a Lock wait), within 10 s
sub waits_on {
    my ($s) = @_;
    my $ev;
    PushJobs::Stack::wait_for(10, sub {
        $ev = sql("SELECT wait_event FROM pg_stat_activity"
                  . " WHERE application_name = '$s->{name}'"
                  . " AND wait_event_type = 'Lock'");
        $ev ne '';
    }, 0.05);
    return $ev;
}

# its exit status and output, within 20 s (undef: still running, killed)
sub finish {
    my ($s) = @_;
    my $done = PushJobs::Stack::wait_for(20, sub {
        waitpid($s->{pid}, POSIX::WNOHANG()) == $s->{pid}
    }, 0.05);
    if (!$done) {
        kill 'KILL', $s->{pid};
        waitpid $s->{pid}, 0;
        return (undef, PushJobs::Stack::slurp($s->{out}));
    }
    my $rc = $? >> 8;
    my $out = PushJobs::Stack::slurp($s->{out});
    chomp $out;
    return ($rc, $out);
}

sub nodes {
    my ($job) = @_;
    return sql("SELECT string_agg(node_name || '=' || status"
               . " || COALESCE('/' || exit_status, ''), ' '"
               . " ORDER BY node_name) FROM pushjobs.job_nodes"
               . " WHERE job_id = '$job'");
}

# the job's events in seq order: "seq name node"
sub events {
    my ($job) = @_;
    return sql("SELECT string_agg(seq || ' ' || name"
               . " || COALESCE(' ' || (data::json ->> 'node'), ''), ', '"
               . " ORDER BY seq) FROM pushjobs.job_events"
               . " WHERE job_id = '$job'");
}

sub status {
    sql("SELECT status FROM pushjobs.jobs WHERE id = '$_[0]'");
}

use POSIX ();

# --- two batches of one job at once ----------------------------------------

my $j = job('voting', n1 => 'new', n2 => 'new', n3 => 'new', n4 => 'new');
my $a = $stack->hold(batch($j, [ 'n1', 'ack_commit' ], [ 'n2', 'ack_commit' ])
                     . ';');
my $b = async('b1', batch($j, [ 'n3', 'ack_commit' ], [ 'n4', 'ack_commit' ]));
is waits_on($b), 'advisory',
   'a second batch of the job runs while the first is open, and waits only '
   . 'to number its events';
$stack->release($a);
my ($rc, $out) = finish($b);
is $rc, 0, '  it commits once the first has';
is $out, '0:false,1:false', '  no rehab';
is nodes($j), 'n1=ready n2=ready n3=ready n4=ready', '  every vote stored';
is events($j), '1 quorum_vote n1, 2 quorum_vote n2, 3 quorum_vote n3, '
    . '4 quorum_vote n4', '  events numbered in commit order';
is status($j), 'voting', '  node_inputs() leaves the job unsettled';
sql("SELECT pushjobs.settle_jobs(ARRAY['$j'])");
is status($j), 'running', '  settle_jobs() ends its voting';

# a report sent again after a job's end names an ended job: not locked
my $ended = job('complete', n1 => 'succeeded');
$a = $stack->hold("SELECT 1 FROM pushjobs.jobs WHERE id = '$ended'"
                  . " FOR SHARE;");
ok eval { sql("SET lock_timeout = '2s'; SELECT pushjobs.settle_jobs("
              . "ARRAY['$ended'])"); 1 },
   'settle_jobs() of an ended job does not wait for its row' or diag $@;
$stack->release($a);

# --- a node in both batches (its channel moved to the other worker) --------

$j = job('voting', n1 => 'new', n2 => 'new', n3 => 'new');
$a = $stack->hold(batch($j, [ 'n1', 'ack_commit' ], [ 'n2', 'ack_commit' ])
                  . ';');
$b = async('b2', batch($j, [ 'n2', 'ack_commit' ], [ 'n3', 'ack_commit' ]));
is waits_on($b), 'transactionid',
   'a batch with a node the open batch changed waits for that node';
$stack->release($a);
($rc, $out) = finish($b);
is $rc, 0, '  it commits after the first';
is nodes($j), 'n1=ready n2=ready n3=ready', '  every vote stored';
is events($j), '1 quorum_vote n1, 2 quorum_vote n2, 3 quorum_vote n3',
   '  n2 stepped again from ready: its second vote is no event';

# --- an abort while a batch holds the job ----------------------------------

$j = job('running', n1 => 'running', n2 => 'running');
$a = $stack->hold(batch($j, [ 'n1', 'succeeded', 0 ]) . ';');
my $abort = async('abort', "SELECT outcome FROM pushjobs.abort_job('o', '$j',"
                           . " 'u', NULL, false, 60000)");
ok waits_on($abort), 'an abort waits for the batch in flight';
$stack->release($a);
($rc, $out) = finish($abort);
is $rc, 0, '  and then runs';
# no channel here (no presence row): the running node is aborted at once
is $out, 'stopped', '  nothing left to stop';
is nodes($j), 'n1=succeeded/0 n2=aborted',
   '  the batch\'s result kept, only the node still running aborted';
is status($j), 'aborted', '  the job ended aborted';

# --- the run timer fires while a batch holds the job -----------------------

$j = job('running', n1 => 'running', n2 => 'running');
sql("UPDATE pushjobs.jobs SET run_deadline = now() + interval '1 second'"
    . " WHERE id = '$j'");
$a = $stack->hold(batch($j, [ 'n1', 'succeeded', 0 ]) . ';');
ok PushJobs::Stack::wait_for(10, sub {
       sql("SELECT run_deadline <= now() FROM pushjobs.jobs"
           . " WHERE id = '$j'") eq 't'
   }, 0.1), 'the run deadline passes while a batch is open';
$b = async('b4', batch($j, [ 'n2', 'succeeded', 0 ]));
ok waits_on($b), '  the next batch waits to time the job out';
$stack->release($a);
($rc, $out) = finish($b);
is $rc, 0, '  and then runs';
is $out, '0:false', '  a final report is never answered with an abort';
is status($j), 'timed_out', '  the job timed out';
is nodes($j), 'n1=succeeded/0 n2=timed_out',
   '  the result committed before the deadline kept, the one after it not';

# --- a batch of two jobs, the later one timed out, while another session
# holds the first and then asks for the second (as settle_jobs() locks
# them, in id order): the batch must not hold the second meanwhile

my $j1 = job('running', n1 => 'running');
my $j2 = job('running', n1 => 'running');
sql("UPDATE pushjobs.jobs SET run_deadline = now() - interval '1 second'"
    . " WHERE id = '$j2'");
my $x = $stack->hold("SELECT 1 FROM pushjobs.jobs WHERE id = '$j1'"
                     . " FOR UPDATE;");
my $json = qq([{"org":"o","node":"n1","job_id":"$j1","type":"succeeded",)
         . qq("exit_status":0},{"org":"o","node":"n1","job_id":"$j2",)
         . qq("type":"succeeded","exit_status":0}]);
$b = async('b5', "SELECT count(*) FROM pushjobs.node_inputs('$json')");
ok waits_on($b), 'a batch of two jobs waits for the first';
print $x "SELECT 1 FROM pushjobs.jobs WHERE id = '$j2' FOR UPDATE;\n";
ok $stack->release($x), '  the session holding it locks the second too, '
   . 'and commits (no deadlock)';
($rc, $out) = finish($b);
is $rc, 0, '  then the batch runs' or diag $out;
is status($j2), 'timed_out', '  the second job timed out by it';
is nodes($j1) . ' ' . nodes($j2), 'n1=succeeded/0 n1=timed_out',
   '  the first job\'s report stored, the second\'s after its timer not';

# --- the sweeper settles what no settle_jobs() followed --------------------

$j = job('voting', n1 => 'new');
sql(batch($j, [ 'n1', 'ack_commit' ]));
is status($j), 'voting', 'a batch whose settle never came';
my $held = job('voting', n1 => 'new');
sql(batch($held, [ 'n1', 'ack_commit' ]));
$a = $stack->hold("SELECT 1 FROM pushjobs.jobs WHERE id = '$held'"
                  . " FOR SHARE;");
sql('SELECT pushjobs.sweep(60000, 60000, 60)');
is status($j), 'running', '  the sweeper settles it';
is status($held), 'voting', '  but skips a job a batch holds';
$stack->release($a);
sql('SELECT pushjobs.sweep(60000, 60000, 60)');
is status($held), 'running', '  and settles it at its next sweep';

$stack->stop;
done_testing;
