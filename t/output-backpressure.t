# Back-pressure of what agents send (issue 13): when PostgreSQL takes it
# more slowly than the agents send it, the module stops reading their
# channels instead of dropping messages or growing its memory: a streaming
# agent's once the live output gathered for the next node_outputs() call
# reaches pushjobs_output_batch_size (a dropped chunk is a gap that ends
# the node's stream), every agent's once eight times as much waits for
# node_inputs() (final reports carry their output: with live output off,
# else they leave out what was streamed).  PostgreSQL is made
# slow for real: a transaction holds a lock on pushjobs.job_output_chunk
# (node_outputs() waits) or on pushjobs.job_output (final reports wait).
# While it waits the channels are stalled (pushjobs_agent_stalls_total), the
# job goes on, nginx logs no dropped entry and no channel is closed as
# dead; once the lock goes, every byte arrives: the feed's output events
# are contiguous and equal what each command printed, and so is the stored
# output.  Both transports: websocket, then long-poll.  A feed fetches its
# events in batches bounded by bytes (a quarter of
# pushjobs_max_queued_output, here 64 KB), so that a reader far behind a
# streaming job is not closed as too slow for one batch: feed_events()
# stops at the bound, and a reader opened after the job replays it all,
# batch after batch.  A reader of a streaming job that stops reading is
# held to one such batch (its next one is fetched when it has taken the
# last), not closed at its queue cap; one that goes away mid-stream resumes
# by Last-Event-ID with every byte once.  And down to the command: while the server does not
# read, a command printing 211 MB waits in write() (the agent stops
# reading its pipes) and the agent's memory grows only by what the sockets
# took before they filled.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use IO::Handle;
use MIME::Base64 qw(decode_base64);
use Test::More;
use PushJobs::Stack;
use PushJobs::SSE;

my $LINES = 30000;                      # about 170 KB per node
my $BATCH = 16 * 1024;                 # final reports wait at 128 KB

my $tmp = tempdir('pushjobs-backpressure-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $tmp;

PushJobs::Stack::spew("$tmp/spew3", <<"EOF", 0755);
#!/bin/sh
seq 1 430000
sleep 1
EOF
PushJobs::Stack::spew("$tmp/flood", <<"EOF", 0755);
#!/bin/sh
seq 1 25000000
EOF
PushJobs::Stack::spew("$tmp/spew", <<"EOF", 0755);
#!/bin/sh
seq 1 $LINES
sleep 1
EOF

my $stack = PushJobs::Stack->new(
    agents => 3, workers => 2,
    whitelist => { 'spew' => "$tmp/spew", 'spew3' => "$tmp/spew3",
                   'flood' => "$tmp/flood" },
    whitelist_regex => [],
    # the agents would keep 211 MB of a job's output: only back-pressure
    # keeps them from it
    client_rb_extra => "max_output_size 268435456\n",
    nginx_extra => "pushjobs_output_batch_size $BATCH;\n"
                   . "pushjobs_max_queued_output 256k;\n"
                   . "pushjobs_max_output_size 4m;",
);
$stack->start;

my $org = $stack->org;
my @nodes = $stack->agent_names;
my $want = join '', map { "$_\n" } 1 .. $LINES;

sub stalls {
    my ($batch) = @_;
    my $res = $stack->http->request('GET', $stack->url . '/pushy/_metrics');
    my ($v) = ($res->{content} // '')
              =~ /^pushjobs_agent_stalls_total\{batch="$batch"\} (\d+)$/m;
    return $v // -1;
}

sub streamed {
    my (@ev) = @_;
    my (%bytes, %contiguous);
    for my $ev (grep { ($_->{event} // '') eq 'output' } @ev) {
        my $d = $ev->{json};
        next unless $d->{stream} eq 'stdout';
        my $had = length($bytes{ $d->{node} } // '');
        $contiguous{ $d->{node} } //= 1;
        $contiguous{ $d->{node} } = 0 unless $d->{offset} == $had;
        $bytes{ $d->{node} } .= decode_base64($d->{data});
    }
    return (\%bytes, \%contiguous);
}

# Live output on or off (pushjobs_live_output): nginx restarted, the
# agents back on their new channels.  With live output, final reports
# leave out what was streamed: to fill the input batch they must carry it.
sub live_output {
    my ($on) = @_;
    $stack->{nginx_extra} =~ s/\npushjobs_live_output off;//;
    $stack->{nginx_extra} .= "\npushjobs_live_output off;" unless $on;
    $stack->stop_nginx;
    $stack->start_nginx;
    ok $stack->wait_online(\@nodes, 30),
        'live output ' . ($on ? 'on' : 'off') . ': the agents back';
}

sub run_held {
    my ($how, $table, $batch) = @_;
    my $live = $batch eq 'output';
    live_output($live);
    $how .= ", $table held";
    my $log_at = length $stack->error_log;
    my $stalls = stalls($batch);
    my $lock = $stack->hold("LOCK TABLE pushjobs.$table "
                             . 'IN SHARE ROW EXCLUSIVE MODE;');

    my $id = $stack->start_job({ command => 'spew', nodes => \@nodes,
                                 capture_output => JSON::PP::true });
    my $sse = PushJobs::SSE->open($stack,
        "/organizations/$org/pushy/job_status_feed/$id");

    ok PushJobs::Stack::wait_for(30, sub { stalls($batch) > $stalls }, 0.2),
        "$how: the $batch batch fills and channels stall";
    my $job = $stack->job($id);
    is $job->{status}, 'running', '  the job is still running';

    $stack->release($lock);
    my @ev = $sse->until_event('job_complete', 60);
    $job = $stack->wait_job($id, 60);
    is $job->{status}, 'complete', "$how: the lock released, the job completes";
    is_deeply [ sort @{ $job->{nodes}{succeeded} // [] } ], [ sort @nodes ],
        '  every node succeeded';

    my ($bytes, $contiguous) = streamed(@ev);
    for my $n (@nodes) {
        ok $stack->node_output($id, $n, 'stdout') eq $want,
            "  $n: the stored output is whole";
        next unless $live;
        ok $contiguous->{$n}, "  $n: the feed's output events are contiguous";
        ok(($bytes->{$n} // '') eq $want,
           "  $n: and carry every byte the command printed")
            or diag 'got ' . length($bytes->{$n} // '') . ' of '
                    . length($want) . ' bytes';
    }

    my $log = substr $stack->error_log, $log_at;
    unlike $log, qr/dropping an entry|could not queue an output chunk/,
        '  nginx dropped no output';
    unlike $log, qr/did not answer the last ping/,
        '  no stalled channel was taken for dead';
    return unless $live;

    # one fetch: about 64 KB of the 700 KB of events (an output event's
    # chunk counted as base64), the rest the next
    my @rows = split /\n/, $stack->psql('pushjobs',
        "SELECT octet_length(data) + COALESCE(octet_length(chunk) / 3 * 4"
        . " + 16, 0) FROM pushjobs.feed_events('$id', 0, 1000, 65536)");
    my $sum = 0;
    $sum += $_ for @rows;
    $sum -= $rows[-1] if @rows;
    ok @rows > 1 && $sum < 65536 && $sum + $rows[-1] >= 65536,
        "  feed_events() stops at the first event reaching 64 KB "
        . '(' . scalar(@rows) . ' events)';

    # the whole feed again, batch after batch
    $sse = PushJobs::SSE->open($stack,
        "/organizations/$org/pushy/job_status_feed/$id");
    @ev = $sse->until_event('job_complete', 60);
    is(($ev[-1]{event} // ''), 'job_complete',
       "$how: a reader opened after the job replays the feed to its end");
    ($bytes) = streamed(@ev);
    is scalar(grep { ($bytes->{$_} // '') eq $want } @nodes), scalar @nodes,
        '  with every node\'s output, though more than its queue may hold';
}

run_held('websocket', 'job_output_chunk', 'output');
run_held('websocket', 'job_output', 'input');
live_output(1);

# --- a slow reader of output: held to a batch, resumed by Last-Event-ID ----

sub overflows {
    my $res = $stack->http->request('GET', $stack->url . '/pushy/_metrics');
    my ($v) = ($res->{content} // '')
              =~ /^pushjobs_queue_overflows_total\{queue="feed"\} (\d+)$/m;
    return $v // -1;
}

{
    my $over = overflows();
    my $id = $stack->start_job({ command => 'spew3', nodes => [ $nodes[0] ],
                                 capture_output => JSON::PP::true });
    my $path = "/organizations/$org/pushy/job_status_feed/$id";
    is $stack->wait_job($id, 60)->{status}, 'complete',
        'a job streaming 3 MB completes';
    # as a feed sends them: output events with their chunks' bytes
    my $events = $stack->psql('pushjobs', "SELECT sum(octet_length(data)) "
        . "FROM pushjobs.feed_events('$id', 0, 1000000)") + 0;
    cmp_ok $events, '>', 3 * 1024 * 1024,
        "  its feed holds $events bytes of events";
    # a reader of the whole feed that does not read: 2 KB of receive buffer
    my $slow = PushJobs::SSE->open($stack, $path,
                                   sock => PushJobs::SSE::tls_socket($stack,
                                                                     2048));
    is $slow->status, 200, '  a reader of its feed that does not read';
    # (a bounded look for something that must not happen)
    ok !PushJobs::Stack::wait_for(3, sub { overflows() > $over }, 0.2),
        '  more than the socket buffers and its 256 KB queue: it is held to '
        . 'a batch, not closed';

    # it reads a few events, goes away, and comes back from the last one
    my @ev = $slow->events(5, 10);
    is scalar @ev, 5, '  it reads: the first events come';
    $slow->close;
    my $sse = PushJobs::SSE->open($stack, $path,
                                  last_event_id => $ev[-1]{id});
    push @ev, $sse->until_event('job_complete', 60);
    is(($ev[-1]{event} // ''), 'job_complete',
       "  gone after $ev[4]{id}, it resumes from there to job_complete");
    my ($bytes, $contiguous) = streamed(@ev);
    ok $contiguous->{ $nodes[0] },
        '  the output events contiguous across the two readers';
    my $stored = $stack->node_output($id, $nodes[0], 'stdout');
    ok length($bytes->{ $nodes[0] } // '') >= length($stored)
       && substr($bytes->{ $nodes[0] }, 0, length $stored) eq $stored,
        '  and they carry the stored output ('
        . length($bytes->{ $nodes[0] } // '') . ' bytes)';
}

# --- down to the command: a 211 MB writer waits, the agent does not keep it --

# the agent's processes (it and its privilege-separated half), by parentage
sub agent_procs {
    my ($root) = @_;
    my %kids;
    for my $stat (glob '/proc/[0-9]*/stat') {
        my $st = eval { PushJobs::Stack::slurp($stat) } // next;
        my ($pid, $comm, $ppid) = $st =~ /^(\d+) \((.*)\) \S+ (\d+)/ or next;
        push @{ $kids{$ppid} }, [ $pid, $comm ];
    }
    my (@out, @todo);
    @todo = ([ $root, 'pushjobs-agent' ]);
    while (my $p = shift @todo) {
        push @out, $p->[0] if $p->[1] =~ /^pushjobs-agent/;
        push @todo, @{ $kids{ $p->[0] } // [] };
    }
    return @out;
}

sub agent_rss {
    my $kb = 0;
    for my $pid (agent_procs($stack->{procs}{"agent:$nodes[0]"})) {
        my $st = eval { PushJobs::Stack::slurp("/proc/$pid/status") } // next;
        $kb += $1 if $st =~ /^VmRSS:\s+(\d+)/m;
    }
    return $kb;
}

# What the agent may read before its channel stalls: what the sockets
# take before they fill.  The kernel grows a loopback connection's buffers
# up to tcp_wmem's maximum on the agent's side and tcp_rmem's on nginx's
# (6 MB on Debian, 32 MB on some machines), plus the pipe and nginx's
# output batch.  The agent keeps it in a buffer that grows by doubling:
# at most the next power of two.  Under make asan, realloc() leaves each
# earlier buffer in ASan's quarantine (its halves sum to less than the
# last), so twice that.  8 MB for the allocator and the stacks.  Keeping
# the 211 MB would take a 256 MB buffer: the bound must stay below it, or
# the check would prove nothing on this machine.
sub sysctl_max {
    my ($name) = @_;
    my $v = eval { PushJobs::Stack::slurp("/proc/sys/net/ipv4/$name") }
            // '';
    my ($max) = $v =~ /(\d+)\s*$/;
    return $max // 6 * 1024 * 1024;
}
my $socket_kb = int((sysctl_max('tcp_rmem') + sysctl_max('tcp_wmem')) / 1024)
                + 2 * 1024;
my $buffer_kb = 1024;
$buffer_kb *= 2 while $buffer_kb < $socket_kb;
my $RSS_BOUND = $buffer_kb * ($ENV{PUSHJOBS_SANITIZED} ? 2 : 1) + 8 * 1024;

sub writer_alive {
    scalar grep {
        (eval { PushJobs::Stack::slurp($_) } // '') =~ /^seq\0001\00025000000/
    } glob '/proc/[0-9]*/cmdline';
}

{
    my $rss0 = agent_rss();
    my $stalls = stalls('output');
    my $lock = $stack->hold('LOCK TABLE pushjobs.job_output_chunk '
                             . 'IN SHARE ROW EXCLUSIVE MODE;');
    my $id = $stack->start_job({ command => 'flood', nodes => [ $nodes[0] ],
                                 capture_output => JSON::PP::true });
    ok PushJobs::Stack::wait_for(30, sub { stalls('output') > $stalls }, 0.2),
        'a 211 MB writer: its channel stalls';
    ok PushJobs::Stack::wait_for(10, sub { writer_alive() }, 0.1),
        '  the writer runs';
    # seq prints 211 MB in a second or two when nothing holds it back
    sleep 3;
    ok writer_alive(), '  3 s later it still waits in write()';
    my $grew = agent_rss() - $rss0;
    SKIP: {
        skip "this machine's sockets take so much ($socket_kb KB) that the "
             . "agent's memory cannot tell them from the 211 MB", 1
            if $RSS_BOUND >= 200 * 1024;
        cmp_ok $grew, '<', $RSS_BOUND,
            "  the agent's memory grew by $grew KB, within what the sockets "
            . "take ($RSS_BOUND KB), not by the 211 MB it would keep";
    }
    $stack->release($lock);
    my $res = $stack->request('POST',
                              "/organizations/$org/pushy/jobs/$id/abort");
    like $res->{status}, qr/^20[02]$/, '  released, and the job aborted';
    is $stack->wait_job($id, 60)->{status}, 'aborted', '  it ends aborted';
    ok PushJobs::Stack::wait_for(10, sub { !writer_alive() }, 0.1),
        '  the writer is gone';
}

for my $n (@nodes) {
    $stack->stop_agent($n);
    $stack->start_agent($n, args => ['--long-poll']);
}
ok $stack->wait_online(\@nodes, 30), 'the agents back, over long-poll';

run_held('long-poll', 'job_output_chunk', 'output');
run_held('long-poll', 'job_output', 'input');

$stack->stop;
done_testing;
