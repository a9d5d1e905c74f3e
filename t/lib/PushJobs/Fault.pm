package PushJobs::Fault;

# What every fault test asserts once its fault has struck, read from the
# database and the logs rather than from what the clients saw:
#
#   jobs_final     every job reached a final status, and so did its nodes;
#   exactly_once   each node's result (its run_complete event) was recorded
#                  at most once, and its vote (quorum_vote success or
#                  failure) at most once, with no quorum_vote status twice (a
#                  node that voted may still be lost: success, then down or
#                  lost_availibility, as in 2.x), each job ended
#                  (job_complete) exactly once, and its event ids have no
#                  gap;
#   bad_log_lines  nginx logged no [alert], [emerg] or [crit], and no
#                  worker "exited on signal" (a test that kills a worker on
#                  purpose names the pids it killed);
#   timed          the wall time of a request, to bound REST latency while
#                  a fault is on.
#
# And the means to strike: which nginx worker holds what (worker_pids,
# agent_workers, socket_worker), killing one and waiting for its
# replacement (kill_worker), and a feed reader that resumes by
# Last-Event-ID whenever its connection ends (PushJobs::Fault::Feed).

use strict;
use warnings;

use Exporter qw(import);
use Time::HiRes qw(time);

our @EXPORT_OK = qw(jobs_final exactly_once bad_log_lines timed
                    check_invariants worker_pids agent_workers socket_worker
                    kill_worker wait_reconnected wait_channels
                    listen_cut listen_restore);

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
            SELECT job_id, name, data::json->>'node',
                   string_agg(data::json->>'status', ',' ORDER BY seq)
              FROM pushjobs.job_events
             WHERE job_id IN ($in)
               AND name IN ('run_complete', 'quorum_vote')
             GROUP BY 1, 2, 3
            HAVING name = 'run_complete' AND count(*) > 1
                OR count(DISTINCT data::json->>'status') < count(*)
                OR count(*) FILTER (WHERE data::json->>'status'
                                    IN ('success', 'failure')) > 1})) {
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
    $stack->alerts_checked;
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

# The worker pids of a front end's master, from /proc, sorted.
sub worker_pids {
    my ($stack, $fe) = @_;
    my $master = $stack->{procs}{ 'nginx:' . ($fe // 'fe1') } or return ();
    my @pids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $stat or next;
        my $line = <$fh> // next;
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        my ($pid, $ppid) = $line =~ /^(\d+) \(.*\) \S+ (\d+) /s or next;
        push @pids, $pid if $ppid == $master;
    }
    return sort { $a <=> $b } @pids;
}

# {node => pid of the worker that logged its latest channel open}, from
# the error log's info lines; only nodes whose channel opened after the
# log's first OFFSET bytes when OFFSET is given.
sub agent_workers {
    my ($stack, $fe, $offset) = @_;
    my $log = $stack->error_log($fe // 'fe1');
    $log = substr($log, $offset) if $offset && $offset <= length $log;
    my $org = $stack->org;
    my %w;
    while ($log =~
           /\] (\d+)#\d+: .*?agent "([^"]+)" of "\Q$org\E" connected/g)
    {
        $w{$2} = $1;
    }
    return \%w;
}

# Waits until every node of NAMES has opened a channel after the error
# log's first OFFSET bytes (on a worker other than those in %opt{not});
# returns {node => worker pid} or undef.
sub wait_reconnected {
    my ($stack, $names, $offset, $timeout, %opt) = @_;
    my %not = map { $_ => 1 } @{ $opt{not} // [] };
    my $w;
    return PushJobs::Stack::wait_for($timeout, sub {
        $w = agent_workers($stack, $opt{fe}, $offset);
        return 0 if grep { !$w->{$_} || $not{ $w->{$_} } } @$names;
        return $w;
    }, 0.1);
}

# The workers' LISTEN connections lost, and kept from reconnecting, while
# their query connections stay up: what a worker misses then (NOTIFYs), it
# must catch up on (recent_jobs()) once it listens again.  A connection
# limit on the database keeps new connections of the role out (the
# postgres superuser is not counted).  Returns how many were cut; true.
my $LISTENERS = "SELECT pid FROM pg_stat_activity
                  WHERE datname = 'pushjobs' AND usename = 'pushjobs'
                    AND query = 'LISTEN pushjobs'";

sub _su {
    my ($stack, $sql) = @_;
    my $out = $stack->psql('postgres', $sql, 'pushjobs');
    chomp $out;
    return $out;
}

sub listen_count { _su($_[0], "SELECT count(*) FROM ($LISTENERS) l") }

sub listen_cut {
    my ($stack) = @_;
    my $n = listen_count($stack);
    my $conns = _su($stack, "SELECT count(*) FROM pg_stat_activity
                    WHERE datname = 'pushjobs' AND usename = 'pushjobs'");
    _su($stack, 'ALTER DATABASE pushjobs CONNECTION LIMIT ' . ($conns - $n));
    _su($stack, "SELECT pg_terminate_backend(pid) FROM ($LISTENERS) l");
    PushJobs::Stack::wait_for(10, sub { listen_count($stack) == 0 }, 0.1)
        or return undef;
    return $n;
}

# Lets the LISTEN connections back; true once N of them listen again.
sub listen_restore {
    my ($stack, $n, $timeout) = @_;
    _su($stack, 'ALTER DATABASE pushjobs CONNECTION LIMIT -1');
    return PushJobs::Stack::wait_for($timeout // 15,
        sub { listen_count($stack) == $n }, 0.1);
}

# Waits until every node of NAMES has a channel online, per the database,
# on a live worker of front end FE (node_states alone may still count a
# channel of a worker just gone); true or undef.
sub wait_channels {
    my ($stack, $names, $timeout, $fe) = @_;
    my $org = $stack->org;
    return PushJobs::Stack::wait_for($timeout, sub {
        my %live = map { $_ => 1 } worker_pids($stack, $fe);
        my %on;
        for (split /\n/, $stack->psql('pushjobs', "SELECT node_name, owner
                FROM pushjobs.presence WHERE online AND org = '$org'")) {
            my ($node, $owner) = split /\t/;
            $on{$node} = 1 if $owner =~ /:(\d+):\d+$/ && $live{$1};
        }
        return !grep { !$on{$_} } @$names;
    }, 0.2);
}

# The worker of front end FE that holds the server side of a client
# socket (a feed or a channel the test opened), from /proc/net/tcp and the
# workers' descriptors; undef when none does (yet).
sub socket_worker {
    my ($stack, $sock, $fe) = @_;
    my $cport = $sock->sockport or return undef;
    return port_worker($stack, $stack->port($fe), $cport, $fe);
}

# The worker of front end FE holding the TCP socket from local port PORT to
# remote port PEER (a connection to PostgreSQL: PORT its
# pg_stat_activity.client_port, PEER the server's); undef if none.
sub port_worker {
    my ($stack, $port, $cport, $fe) = @_;
    my $want = sprintf ':%04X', $port;
    my $peer = sprintf ':%04X', $cport;
    my $inode;
    for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $fh, '<', $f or next;
        while (<$fh>) {
            my @f = split ' ';
            next unless @f > 9;
            if ($f[1] =~ /\Q$want\E$/ && $f[2] =~ /\Q$peer\E$/) {
                $inode = $f[9];
                last;
            }
        }
        last if $inode;
    }
    return undef unless $inode;
    for my $pid (worker_pids($stack, $fe)) {
        for my $fd (glob "/proc/$pid/fd/*") {
            my $l = readlink $fd // next;
            return $pid if $l eq "socket:[$inode]";
        }
    }
    return undef;
}

# kill -9 one worker; waits (bounded) until the master has replaced it.
# Returns the new worker pids, or an empty list on timeout.
sub kill_worker {
    my ($stack, $pid, %opt) = @_;
    my @before = worker_pids($stack, $opt{fe});
    kill 'KILL', $pid or return ();
    my @after;
    PushJobs::Stack::wait_for($opt{timeout} // 10, sub {
        @after = worker_pids($stack, $opt{fe});
        return @after == @before && !grep { $_ == $pid } @after;
    }, 0.05) or return ();
    return @after;
}

# A feed (a job's or the org's) read as a browser's EventSource would: when
# its connection ends without the job's end, or a worker drops it, it opens
# the feed again with the Last-Event-ID of the last event it received.
package PushJobs::Fault::Feed;

use PushJobs::SSE;
use Time::HiRes qw(time);

# new(stack, path, %sse_options): opens the feed; croaks unless 200.
sub new {
    my ($class, $stack, $path, %opt) = @_;
    my $self = bless { stack => $stack, path => $path, opt => \%opt,
                       events => [], opens => 0, last_id => $opt{last_event_id},
                     }, $class;
    $self->reopen or die "feed $path: no 200";
    return $self;
}

sub reopen {
    my ($self) = @_;
    my $sse = eval {
        PushJobs::SSE->open($self->{stack}, $self->{path}, %{ $self->{opt} },
                            last_event_id => $self->{last_id});
    };
    return 0 unless $sse && $sse->status == 200;
    $self->{sse} = $sse;
    $self->{opens}++;
    return 1;
}

sub sse { $_[0]{sse} }
sub events { @{ $_[0]{events} } }
sub opens { $_[0]{opens} }
sub ended { $_[0]{ended} }

# Reads for up to TIMEOUT seconds, reconnecting whenever the stream ends,
# until UNTIL (a code ref on the reader) is true or, for a job feed, its
# job_complete came.  Returns the reader's "done" condition.
sub follow {
    my ($self, $timeout, $until) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 if $until && $until->($self);
        return 1 if $self->{ended};
        if (!$self->{sse}) {
            Time::HiRes::sleep(0.1) unless $self->reopen;
            next;
        }
        my $left = $deadline - time;
        my $ev = $self->{sse}->next_event($left > 0.5 ? 0.5 : $left);
        if ($ev) {
            push @{ $self->{events} }, $ev;
            $self->{last_id} = $ev->{id} if defined $ev->{id};
            $self->{ended} = 1 if ($ev->{event} // '') eq 'job_complete'
                                  && $self->{path} =~ m{/job_status_feed/};
            next;
        }
        next unless $self->{sse}->eof || $self->{sse}->done;
        # the connection ended before the job did: resume where it stopped
        $self->{sse}->close;
        $self->{sse} = undef;
    }
    return ($until && $until->($self)) || $self->{ended} ? 1 : 0;
}

sub close {
    my ($self) = @_;
    $self->{sse}->close if $self->{sse};
    $self->{sse} = undef;
}

1;
