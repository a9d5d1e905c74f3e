package PushJobs::Fault;

# What every fault test asserts once its fault has struck, read from the
# database and the logs rather than from what the clients saw:
#
#   jobs_final     every job reached a final status, and so did its nodes;
#   exactly_once   each node's result (its run_complete event) and its vote
#                  (quorum_vote) were recorded at most once, each job ended
#                  (job_complete) exactly once, and its event ids have no
#                  gap;
#   bad_log_lines  nginx logged no [alert], [emerg] or [crit], and no
#                  worker "exited on signal" (a test that kills a worker on
#                  purpose names the pids it killed);
#   timed          the wall time of a request, to bound REST latency while
#                  a fault is on.

use strict;
use warnings;

use Exporter qw(import);
use Time::HiRes qw(time);

our @EXPORT_OK = qw(jobs_final exactly_once bad_log_lines timed
                    check_invariants);

my $FINAL_JOB = q{('complete','quorum_failed','timed_out','crashed','aborted')};
my $ACTIVE_NODE = q{('new','ready','running')};

sub _ids {
    my (@ids) = @_;
    return join ',', map { "'$_'" } grep { /^[0-9a-f]{32}$/ } @ids;
}

# Problems (strings) with the jobs' final statuses; empty when all is well.
sub jobs_final {
    my ($stack, @ids) = @_;
    return () unless @ids;
    my $in = _ids(@ids);
    my @bad;
    for my $row (split /\n/, $stack->psql('pushjobs', qq{
            SELECT id, status FROM pushjobs.jobs
             WHERE id IN ($in) AND status NOT IN $FINAL_JOB})) {
        push @bad, "job not final: $row";
    }
    my $have = $stack->psql('pushjobs',
        "SELECT count(*) FROM pushjobs.jobs WHERE id IN ($in)");
    chomp $have;
    push @bad, 'jobs missing: ' . (@ids - $have) . ' of ' . scalar @ids
        if $have != @ids;
    for my $row (split /\n/, $stack->psql('pushjobs', qq{
            SELECT job_id, node_name, status FROM pushjobs.job_nodes
             WHERE job_id IN ($in) AND status IN $ACTIVE_NODE})) {
        push @bad, "node not final: $row";
    }
    return @bad;
}

# Problems with the jobs' event streams: duplicates and gaps.
sub exactly_once {
    my ($stack, @ids) = @_;
    return () unless @ids;
    my $in = _ids(@ids);
    my @bad;
    for my $row (split /\n/, $stack->psql('pushjobs', qq{
            SELECT job_id, name, data::json->>'node', count(*)
              FROM pushjobs.job_events
             WHERE job_id IN ($in)
               AND name IN ('run_complete', 'quorum_vote')
             GROUP BY 1, 2, 3 HAVING count(*) > 1})) {
        push @bad, "recorded more than once: $row";
    }
    for my $row (split /\n/, $stack->psql('pushjobs', qq{
            SELECT j.id, count(e.seq) FROM pushjobs.jobs j
              LEFT JOIN pushjobs.job_events e
                ON e.job_id = j.id AND e.name = 'job_complete'
             WHERE j.id IN ($in) AND j.status IN $FINAL_JOB
             GROUP BY 1 HAVING count(e.seq) <> 1})) {
        push @bad, "job_complete not exactly once: $row";
    }
    for my $row (split /\n/, $stack->psql('pushjobs', qq{
            SELECT job_id, count(*), max(seq) FROM pushjobs.job_events
             WHERE job_id IN ($in)
             GROUP BY 1 HAVING count(*) <> max(seq)})) {
        push @bad, "event ids with a gap: $row";
    }
    return @bad;
}

# nginx error log lines no fault may cause.  %opt: killed => [pids] the
# test killed itself (their "exited on signal 9" lines are expected).
sub bad_log_lines {
    my ($stack, %opt) = @_;
    my %killed = map { $_ => 1 } @{ $opt{killed} // [] };
    return grep {
        my $expected = / (\d+) exited on signal 9\b/ && $killed{$1};
        !$expected && (/\[(alert|emerg|crit)\]/ || /exited on signal/);
    } split /\n/, $stack->error_log;
}

# (seconds, result) of one call.
sub timed {
    my ($code) = @_;
    my $t0 = time;
    my @r = $code->();
    return (time - $t0, @r);
}

# All of the above as one list of problems, for is_deeply(..., []).
sub check_invariants {
    my ($stack, $ids, %opt) = @_;
    return (jobs_final($stack, @$ids), exactly_once($stack, @$ids),
            bad_log_lines($stack, %opt));
}

1;
