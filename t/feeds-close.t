# Feeds closed while a batch of events is being delivered (issue 16: the
# feed was freed inside the loop that still used it).  Readers that stop
# reading, on sockets with a tiny receive buffer, are closed by the module
# in the middle of a batch ("reader too slow") or once their queue stops
# moving (send_timeout): on a job's feed replayed from Last-Event-ID, an
# org feed replayed from start_of_history, and a running job's feed when
# the events of a NOTIFY are fanned out to several readers.  Next to them,
# readers that read get every event once, in order, up to job_complete
# (whose feed closes inside that loop too); batches are sent one at a time,
# so a reader is not closed for the size of a replay.  The workers must
# survive, with no [crit] (a TLS shutdown after a half-written record).
# Under make asan the same runs catch the use-after-free.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use IO::Socket::SSL;
use Test::More;
use Time::HiRes qw(time);
use PushJobs::Stack;
use PushJobs::SSE;

# Events are padded to PAD bytes; NPAD of them make more than one batch
# (1000 rows) and far more than the queue cap plus the socket buffers.
my $PAD = 2000;
my $NPAD = 1500;

my $stack = PushJobs::Stack->new(agents => 1, workers => 2,
    nginx_extra => 'pushjobs_max_queued_output 64k; send_timeout 5s; '
                   . 'pushjobs_feed_linger 600s;');
$stack->start;

my $org = $stack->org;
my $feed = "/organizations/$org/pushy/job_status_feed";
my $master = $stack->{procs}{'nginx:fe1'};

sub workers {
    my @pids = sort { $a <=> $b } map { /(\d+)/ ? $1 : () }
               `ps -o pid= --ppid $master`;
    return "@pids";
}

# A TLS connection to fe1 with a receive buffer of RCVBUF bytes.
sub tls { PushJobs::SSE::tls_socket($stack, $_[0]) }

# A reader that sends its request and never reads, with a tiny buffer.
sub stalled {
    my ($path, %a) = @_;

    my $sock = tls(2048);

    my %h = (
        Host => '127.0.0.1:' . $stack->port,
        Accept => 'text/event-stream',
        %{ $stack->sign(method => 'GET', path => $path, user => 'alice',
                        api_version => '2') },
        'X-Ops-Server-API-Version' => 2,
        (defined $a{last_event_id}
            ? ('Last-Event-ID' => $a{last_event_id}) : ()),
    );

    print $sock "GET $path HTTP/1.1\r\n",
                (map { "$_: $h{$_}\r\n" } sort keys %h), "\r\n";

    return $sock;
}

# A reader that reads, with room for a whole batch of events in its
# receive buffer: the module queues at most 64k behind the socket.
sub reader {
    my ($path, %a) = @_;
    return PushJobs::SSE->open($stack, $path, %a, sock => tls(4 << 20));
}

# Readers closed by the server: too slow (a batch overflowed their queue)
# or timed out (send_timeout, once the queue stopped moving).
sub closed_readers {
    my $log = $stack->error_log;
    my @l = $log =~ /event feed reader (too slow|timed out), closing/g;
    return scalar @l;
}

# every event up to job_complete, with the ids as numbers
sub read_all {
    my ($sse, $timeout) = @_;
    my @ev = $sse->until_event('job_complete', $timeout);
    return @ev;
}

sub contiguous {
    my ($prefix, $from, @ev) = @_;
    my $n = $from;
    for my $e (@ev) {
        return "event $n is $e->{id}" unless ($e->{id} // '') eq "$prefix-$n";
        $n++;
    }
    return '';
}

my $pad = 'x' x $PAD;

# NPAD padded events between a finished job's first ones and job_complete
sub pad_job {
    my ($id) = @_;
    $stack->psql('pushjobs', <<"SQL");
UPDATE pushjobs.job_events SET seq = seq + $NPAD
 WHERE job_id = '$id' AND name = 'job_complete';
INSERT INTO pushjobs.job_events (job_id, seq, name, data)
SELECT '$id', m.last + g, 'pad', '{"timestamp":"x","n":' || g || ',"pad":"$pad"}'
  FROM generate_series(1, $NPAD) g,
       (SELECT max(seq) AS last FROM pushjobs.job_events
         WHERE job_id = '$id' AND name <> 'job_complete') m;
SQL
}

my $pids = workers();
like $pids, qr/^\d+ \d+$/, 'two workers';

# --- a job's feed replayed from Last-Event-ID --------------------------------

my $id = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($id, 30)->{status}, 'complete', 'a finished job';

pad_job($id);
my $total = $stack->psql('pushjobs',
    "SELECT count(*) FROM pushjobs.job_events WHERE job_id = '$id'") + 0;
is $total, $NPAD + 6, "the job has $total events";

my @stalled = map { stalled("$feed/$id", last_event_id => 'job-1') } 1 .. 2;
my $sse = reader("$feed/$id", last_event_id => 'job-1');
is $sse->status, 200, 'a reader of the same replay';

ok PushJobs::Stack::wait_for(20, sub { closed_readers() >= 2 }, 0.1),
    'the readers that stopped reading are closed';
my @ev = read_all($sse, 60);
is scalar @ev, $total - 1, '  the other reader got every event after job-1';
is contiguous('job', 2, @ev), '', '  once each, in order';
is $ev[-1]{event}, 'job_complete', '  up to job_complete';
ok $sse->wait_end(5), '  and the end of the stream';
is workers(), $pids, '  the workers survived';
close $_ for @stalled;

# --- an org feed replayed from start_of_history --------------------------------

$stack->psql('pushjobs', <<"SQL");
INSERT INTO pushjobs.org_events (org, job_id, name, data)
SELECT '$org', '$id', 'pad', '{"timestamp":"x","n":' || g || ',"pad":"$pad"}'
  FROM generate_series(1, $NPAD) g;
SQL
my $retained = $stack->psql('pushjobs',
    "SELECT count(*) FROM pushjobs.org_events WHERE org = '$org'") + 0;

my $before = closed_readers();
@stalled = map { stalled($feed, last_event_id => 'bogus') } 1 .. 2;
$sse = reader($feed, last_event_id => 'bogus');
is $sse->status, 200, 'an org feed reader of the whole history';

ok PushJobs::Stack::wait_for(20, sub { closed_readers() >= $before + 2 }, 0.1),
    'org feed readers that stopped reading are closed';
my $soh = $sse->next_event(10);
is $soh->{event}, 'start_of_history', '  the other reader: start_of_history';
@ev = $sse->events($retained, 60);
is scalar @ev, $retained, "  then all $retained retained events";
my ($first) = ($ev[0]{id} // '') =~ /(\d+)/;
is contiguous('org', $first, @ev), '', '  once each, in order';
is workers(), $pids, '  the workers survived';
$sse->close;
close $_ for @stalled;

# --- fan-out: several readers of a running job, some go away -------------------

$id = $stack->start_job({ command => 'sleep 4', nodes => ['node1'] });
ok PushJobs::Stack::wait_for(20, sub {
    ($stack->job($id) // {})->{status} eq 'running' }, 0.1),
    'a running job';

my @readers = map { reader("$feed/$id") } 1 .. 3;
@stalled = map { stalled("$feed/$id") } 1 .. 3;
$before = closed_readers();

# a burst of events, announced as the SQL transitions announce theirs
$stack->psql('pushjobs', <<"SQL");
INSERT INTO pushjobs.job_events (job_id, seq, name, data)
SELECT '$id', m.last + g, 'pad', '{"timestamp":"x","n":' || g || ',"pad":"$pad"}'
  FROM generate_series(1, $NPAD) g,
       (SELECT max(seq) AS last FROM pushjobs.job_events
         WHERE job_id = '$id') m;
SELECT pg_notify('pushjobs', 'event $org $id');
SQL

ok PushJobs::Stack::wait_for(20, sub { closed_readers() >= $before + 3 }, 0.1),
    'the readers that stopped reading are closed during the fan-out';

my $n = 0;
for my $r (@readers) {
    $n++;
    my @e = read_all($r, 60);
    is $e[-1]{event}, 'job_complete', "reader $n: up to job_complete";
    is contiguous('job', 1, @e), '', '  every event once, in order';
    ok scalar(@e) > $NPAD, '  the burst included';
}
is $stack->wait_job($id, 30)->{status}, 'complete', 'the job completed';
close $_ for @stalled;

# --- readers closed in the middle of a TLS record, that read again -----------

# Their feeds are closed while OpenSSL holds a record it was writing; when
# the socket drains, a TLS shutdown must not be attempted behind it
# (OpenSSL: "bad write retry", logged as [crit]).
$id = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($id, 30)->{status}, 'complete', 'another finished job';
pad_job($id);
$before = closed_readers();
my @late = map { stalled("$feed/$id", last_event_id => 'job-1') } 1 .. 3;
ok PushJobs::Stack::wait_for(20, sub { closed_readers() >= $before + 3 }, 0.1),
    'readers that stopped reading are closed';
my %open = map { ($_ => $_) } @late;
my $t_end = time + 20;
while (%open && time < $t_end) {
    for my $s (values %open) {
        next unless IO::Select->new($s)->can_read(0.01);
        my $n = sysread($s, my $buf, 65536);
        delete $open{$s} if !defined $n && !$!{EAGAIN} || defined $n && !$n;
    }
}
is scalar(keys %open), 0, '  then read again, to the end of the connection';
close $_ for @late;

# --- and the server is fine ------------------------------------------------------

is workers(), $pids, 'the same workers as at the start';
my $res = $stack->request('GET', '/pushy/_status', unsigned => 1);
is $res->{status}, 200, 'status 200';
unlike $stack->error_log
       . PushJobs::Stack::slurp($stack->dir . '/fe1/stdout.log'),
    qr/exited on signal|AddressSanitizer|runtime error/,
    'no worker died, no sanitizer report';
is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';
is_deeply [ grep { /\[crit\]/ } split /\n/, $stack->error_log ], [],
    'no [crit] either';

$stack->stop;
done_testing;
