package PushJobs::Engine;

# Helpers of the job engine tests (t/engine-*.t): scripted agents on the
# agent channel, the job's per-node statuses, its event rows.

use strict;
use warnings;

use Exporter qw(import);
use Test::More;
use PushJobs::Stack;
use PushJobs::WS;

our @EXPORT = qw(peer say_ expect sync events nodes_of wait_nodes node_state
                 lines_of);

my $json = PushJobs::Stack::json();
my $stack;

# A final report for this id is acked without touching any job.
our $SYNC = 'f' x 32;

sub init { $stack = $_[1] }

sub node_state {
    my ($node) = @_;
    my $res = $stack->request('GET',
        '/organizations/' . $stack->org . "/pushy/node_states/$node");
    return $res->{json} ? $res->{json}{status} : '';
}

# A scripted agent: connects as NODE, says hello holding JOBS ({job_id,
# state}), reads the welcome, waits until the node counts as online.
sub peer {
    my ($node, @jobs) = @_;
    my $hello = $json->encode({ type => 'hello', v => 1, agent => 'engine.t',
                                jobs => [@jobs] });
    my ($ws, $status) = PushJobs::WS->connect($stack, $node,
        extra => PushJobs::WS::frame(1, $hello));
    die "peer $node: $status" unless $status == 101;
    my $welcome = $json->decode($ws->read_text(10) // '{}');
    die "peer $node: no welcome" unless ($welcome->{type} // '') eq 'welcome';
    PushJobs::Stack::wait_for(10, sub { node_state($node) eq 'online' })
        or die "peer $node not online";
    return $ws;
}

sub say_ {
    my ($ws, $type, $id, %f) = @_;
    $ws->send_text($json->encode({ type => $type, v => 1, job_id => $id,
                                   %f }));
}

# The next message of TYPE for job ID; in list context also the messages
# read on the way.
sub expect {
    my ($ws, $type, $id, $timeout) = @_;
    my @skipped;
    while (defined(my $t = $ws->read_text($timeout // 10))) {
        my $m = $json->decode($t);
        if ($m->{type} eq $type && ($m->{job_id} // '') eq $id) {
            return wantarray ? ($m, @skipped) : $m;
        }
        push @skipped, $m;
    }
    diag "no $type for $id; got: "
         . join(', ', map { $json->encode($_) } @skipped);
    return wantarray ? (undef, @skipped) : undef;
}

# What the server sent ("TYPE JOB_ID") before it answered every message
# sent so far: a final report for an unknown job is acked after the inputs
# queued before it (its id sorts last in a batch).
sub sync {
    my ($ws) = @_;
    say_($ws, 'succeeded', $SYNC, exit_status => 0);
    my ($ack, @before) = expect($ws, 'ack', $SYNC);
    die 'sync: no ack' unless $ack;
    return map { "$_->{type} " . ($_->{job_id} // '') } @before;
}

# The job's event rows as "NAME [NODE] [STATUS]".
sub events {
    my ($id) = @_;
    return map {
        my ($name, $data) = split /\t/, $_, 2;
        my $d = $json->decode($data);
        join ' ', grep { defined } $name, $d->{node}, $d->{status};
    } lines_of("SELECT name, data FROM pushjobs.job_events "
               . "WHERE job_id = '$id' ORDER BY seq");
}

sub lines_of {
    my ($sql) = @_;
    return split /\n/, $stack->psql('pushjobs', $sql);
}

sub nodes_of {
    my ($id) = @_;
    my $job = $stack->job($id);
    return $job ? $job->{nodes} : {};
}

# Waits until the job's nodes are WANT; returns what they are.
sub wait_nodes {
    my ($id, $want, $timeout) = @_;
    my $got;
    PushJobs::Stack::wait_for($timeout // 10, sub {
        $got = nodes_of($id);
        $json->encode($got) eq $json->encode($want);
    }, 0.1);
    return $got;
}

1;
