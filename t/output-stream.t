# Live output (issue 13, part 2): real agents stream a captured job's
# stdout and stderr while it runs.  The output is served by GET .../output
# and published as output events on the job's feed mid-run, in order and
# contiguous; the final output equals what the command printed, once;
# binary bytes pass unchanged; pushjobs_max_output_size caps the stream
# (truncated marked); a channel cut mid-run (its nginx worker killed)
# neither duplicates nor loses bytes; the long-poll channel carries the
# same messages.  A node's first chunks may be stored before its ack_run
# (a scripted agent makes it so): they are kept, not dropped as a gap.  The
# final report leaves out what was streamed; a scripted agent's short
# reports are completed from the chunks, or asked for whole (resend).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use Time::HiRes qw(time);
use MIME::Base64 qw(decode_base64);
use Test::More;
use PushJobs::Stack;
use PushJobs::SSE;
use PushJobs::Engine;
use PushJobs::Fault qw(agent_workers kill_worker wait_reconnected);

my $CAP = 6000;

my $tmp = tempdir('pushjobs-output-stream-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $tmp;

# N lines on stdout and on stderr, one pair every 0.1 s
PushJobs::Stack::spew("$tmp/lines", <<'EOF', 0755);
#!/bin/sh
i=1
while [ $i -le "$1" ]; do
    echo "line $i"
    echo "err $i" >&2
    i=$((i + 1))
    sleep 0.1
done
EOF
PushJobs::Stack::spew("$tmp/binary", <<'EOF', 0755);
#!/bin/sh
printf '\000\001\377\200\n'
sleep 0.6
printf '\376\000end'
sleep 0.6
EOF
PushJobs::Stack::spew("$tmp/big", <<'EOF', 0755);
#!/bin/sh
seq 1 3000
sleep 2
EOF

my $stack = PushJobs::Stack->new(
    agents => 1, workers => 2,
    whitelist => {
        'lines'  => "$tmp/lines 20",
        'slow'   => "$tmp/lines 40",
        'binary' => "$tmp/binary",
        'big'    => "$tmp/big",
    },
    whitelist_regex => [],
    nginx_extra => "pushjobs_max_output_size $CAP;",
);
$stack->start;

my $org = $stack->org;
my ($node) = $stack->agent_names;

sub output { $stack->node_output($_[0], $node, $_[1] // 'stdout') }
sub status { my $j = $stack->job($_[0]); $j ? $j->{status} : '' }

sub start {
    $stack->start_job({ command => $_[0], nodes => [$node],
                        capture_output => JSON::PP::true });
}

sub feed {
    PushJobs::SSE->open($stack,
                        "/organizations/$org/pushy/job_status_feed/$_[0]");
}

# the output events of a feed until job_complete: their bytes per stream,
# and whether each event's offset was the length before it
sub streamed {
    my (@ev) = @_;
    my (%bytes, $contiguous);
    $contiguous = 1;
    for my $ev (grep { ($_->{event} // '') eq 'output' } @ev) {
        my $d = $ev->{json};
        my $had = length($bytes{ $d->{stream} } // '');
        $contiguous = 0 unless $d->{node} eq $node && $d->{offset} == $had;
        $bytes{ $d->{stream} } .= decode_base64($d->{data});
    }
    return (\%bytes, $contiguous);
}

sub lines { join '', map { "$_[0] $_\n" } 1 .. $_[1] }

# --- lines over 2 s: visible mid-run, then exactly once ---------------------

my $id = start('lines');
my $sse = feed($id);
is $sse->status, 200, 'job feed open';

my $first;
my @ev;
while (my $ev = $sse->next_event(15)) {
    push @ev, $ev;
    if (($ev->{event} // '') eq 'output') {
        $first = status($id);
        last;
    }
}
is $first, 'running', 'an output event while the job runs';

my $mid = '';
ok PushJobs::Stack::wait_for(10, sub {
    $mid = output($id);
    status($id) eq 'running' && $mid =~ /^line 1\n/
        && $mid ne lines('line', 20);
}, 0.1), 'GET output serves part of stdout while the job runs';
ok index(lines('line', 20), $mid) == 0, '  a prefix of what the command prints';
ok PushJobs::Stack::wait_for(10, sub {
    my ($rows, $gaps) = split /\t/, $stack->psql('pushjobs',
        "SELECT count(*), count(*) FILTER (WHERE off <> prev) FROM"
        . " (SELECT off, lag(off + length(data), 1, 0::bigint) OVER"
        . "  (PARTITION BY node_name, stream ORDER BY off) AS prev"
        . "  FROM pushjobs.job_output_chunk WHERE job_id = '$id') c");
    $rows >= 2 && $gaps == 0;
}, 0.1), '  stored as contiguous chunk rows, one per append';

push @ev, $sse->until_event('job_complete', 30);
my ($bytes, $contiguous) = streamed(@ev);
is $bytes->{stdout}, lines('line', 20), 'the feed streamed stdout in order';
is $bytes->{stderr}, lines('err', 20), '  and stderr';
ok $contiguous, '  each event at the offset where the last one ended';
cmp_ok scalar(grep { ($_->{event} // '') eq 'output' } @ev), '>=', 4,
    '  in several chunks (batched, not one per line nor one at the end)';

is status($id), 'complete', 'job complete';
like PushJobs::Stack::slurp($stack->agent_log($node)),
    qr/-> \{"type":"succeeded"[^\n]*"job_id":"$id"[^\n]*"stdout_offset":\d+,"stdout":""/,
    'the final report left out what was streamed (stdout_offset)';
is output($id), lines('line', 20),
    'final stdout: what the command printed, once';
is $stack->psql('pushjobs', "SELECT stdout_at, length(stdout) FROM"
                            . " pushjobs.job_output WHERE job_id = '$id'"),
    length(lines('line', 20)) . "\t0\n",
    '  stored once: the report\'s row holds none of the streamed bytes';
is output($id, 'stderr'), lines('err', 20), 'final stderr too';
is $stack->psql('pushjobs', "SELECT count(*) FROM pushjobs.job_output_live"
                            . " WHERE job_id = '$id'") + 0, 0,
    'the final report replaced the streamed output';
is $stack->psql('pushjobs', "SELECT count(*) FROM pushjobs.job_events"
                            . " WHERE job_id = '$id' AND name = 'output'"
                            . " AND data LIKE '%\"data\"%'") + 0, 0,
    '  the output events hold no bytes of their own: every byte came as a '
    . 'chunk (the final report waited for the last ones)';
# the same feed read again after the end: the bytes come from the chunk rows
my @again = feed($id)->until_event('job_complete', 30);
my ($bytes2, $contiguous2) = streamed(@again);
is_deeply [ $bytes2->{stdout}, $bytes2->{stderr}, $contiguous2 ],
    [ lines('line', 20), lines('err', 20), 1 ],
    '  a feed read after the end has every byte, from the kept chunks';

# --- binary output ----------------------------------------------------------

my $bin = "\x00\x01\xff\x80\n\xfe\x00end";
$id = start('binary');
$sse = feed($id);
@ev = $sse->until_event('job_complete', 30);
($bytes, $contiguous) = streamed(@ev);
is $bytes->{stdout}, $bin, 'binary bytes stream unchanged';
ok $contiguous, '  contiguous';
is output($id), $bin, 'final binary output';

# --- the cap ----------------------------------------------------------------

$id = start('big');
$sse = feed($id);
ok PushJobs::Stack::wait_for(10, sub {
    status($id) eq 'running' && length(output($id)) == $CAP;
}, 0.1), "mid-run output stops at pushjobs_max_output_size ($CAP bytes)";
is $stack->psql('pushjobs', "SELECT truncated FROM pushjobs.job_output_live"
                            . " WHERE job_id = '$id'"), "t\n",
    '  marked truncated';
@ev = $sse->until_event('job_complete', 30);
($bytes, $contiguous) = streamed(@ev);
my $seq = join '', map { "$_\n" } 1 .. 3000;
is $bytes->{stdout}, substr($seq, 0, $CAP),
    'the feed streamed the first bytes up to the cap';
is output($id), substr($seq, 0, $CAP), 'final output: the same, cut at the cap';
is $stack->psql('pushjobs', "SELECT truncated FROM pushjobs.job_output"
                            . " WHERE job_id = '$id'"), "t\n",
    '  marked truncated';

# --- a channel cut mid-run --------------------------------------------------

my $log_len = length $stack->error_log;
$id = start('slow');
ok PushJobs::Stack::wait_for(10, sub { output($id) =~ /^line 3\n/m }, 0.1),
    'streaming';
my $worker = agent_workers($stack)->{$node};
ok $worker, "the agent's worker: $worker";
$log_len = length $stack->error_log;
ok kill_worker($stack, $worker), 'its worker killed mid-run';
ok wait_reconnected($stack, [$node], $log_len, 20, not => [$worker]),
    'the agent reconnected';
my $before = '';
ok PushJobs::Stack::wait_for(10, sub {
    $before = output($id);
    status($id) eq 'running' && length($before) > 0;
}, 0.1), 'still running, output served';
my $later;
ok PushJobs::Stack::wait_for(10, sub {
    $later = output($id);
    status($id) eq 'running' && length($later) > length($before);
}, 0.1), 'the stream goes on after the reconnect';
ok index(lines('line', 40), $later) == 0,
    '  what is stored is a prefix of the output: nothing twice, no gap';
is $stack->wait_job($id, 30)->{status}, 'complete', 'job complete';
is output($id), lines('line', 40), 'final stdout exactly once';
is output($id, 'stderr'), lines('err', 40), 'final stderr exactly once';

# the whole feed again, from its start: every output event in order
$sse = feed($id);
@ev = $sse->until_event('job_complete', 30);
($bytes, $contiguous) = streamed(@ev);
ok $contiguous, 'output events across the reconnect: contiguous, none twice';
ok index(lines('line', 40), $bytes->{stdout} // '') == 0,
    '  a prefix of stdout';

# --- streamed chunks lost: the whole report is asked for ------------------
# The stored chunks are deleted mid-run (as if the database had lost them),
# so the agent's short report cannot be completed: the server answers
# resend, and the agent sends the whole report from its spool.

$id = start('lines');
ok PushJobs::Stack::wait_for(10, sub { output($id) =~ /^line 2\n/m }, 0.1),
    'lost chunks: streaming';
$stack->psql('pushjobs', "DELETE FROM pushjobs.job_output_live"
                         . " WHERE job_id = '$id';"
                         . " DELETE FROM pushjobs.job_output_chunk"
                         . " WHERE job_id = '$id'");
is $stack->wait_job($id, 30)->{status}, 'complete', '  the job completes';
is output($id), lines('line', 20),
    '  final stdout whole: the agent re-sent its whole report';
is output($id, 'stderr'), lines('err', 20), '  and stderr';
like PushJobs::Stack::slurp($stack->agent_log($node)),
    qr/job $id: re-sending the spooled report/,
    '  (the agent logged the resend)';
like $stack->error_log, qr/asked for its whole report of job $id/,
    '  (the server logged why)';

# --- over long-poll --------------------------------------------------------

my $agent_log = $stack->agent_log($node);
$stack->stop_agent($node);
my $log_at = length PushJobs::Stack::slurp($agent_log);
$stack->start_agent($node, args => ['--long-poll']);
ok $stack->wait_online([$node], 30), 'the agent back, forced into long-poll';
my $t0 = time;
$id = start('lines');
$sse = feed($id);
ok PushJobs::Stack::wait_for(10, sub {
    $mid = output($id);
    status($id) eq 'running' && $mid =~ /^line 1\n/;
}, 0.1), 'long-poll: GET output serves stdout while the job runs';
@ev = $sse->until_event('job_complete', 30);
# polls pipelined back to back (a chunk per stream every 250 ms) must not
# wait for the 25 s hold time: the held one is answered at once even when
# the next poll was already read (into nginx's or the TLS layer's buffer)
cmp_ok time - $t0, '<', 12,
    'long-poll: the 2 s job ends without a held poll stalling it';
($bytes, $contiguous) = streamed(@ev);
is $bytes->{stdout}, lines('line', 20), 'long-poll: the feed streamed stdout';
ok $contiguous, '  contiguous';
is output($id), lines('line', 20), 'long-poll: final stdout once';
my $lp_log = PushJobs::Stack::slurp($agent_log);
$lp_log = substr($lp_log, $log_at) if length $lp_log > $log_at;
like $lp_log, qr/long-poll.*-> \{"type":"output"/s,
    '  the agent sent output messages over long-poll';

# --- chunks before the ack_run is stored -----------------------------------
# The module stores output and other messages in separate batches
# (node_outputs(), node_inputs()): an agent's first chunks may reach
# PostgreSQL while its node is still ready.  Dropped, they made a gap, and
# the rest of the node's stream waited for its final report.

PushJobs::Engine->init($stack);
my $g = PushJobs::Engine::peer('ghost');
$id = $stack->start_job({ command => 'chef-client', nodes => ['ghost'],
                          capture_output => JSON::PP::true });
PushJobs::Engine::expect($g, 'commit', $id) or die 'no commit';
PushJobs::Engine::say_($g, 'ack_commit', $id);
PushJobs::Engine::expect($g, 'run', $id) or die 'no run';
PushJobs::Engine::say_($g, 'output', $id, stream => 'stdout', offset => 0,
                       data => MIME::Base64::encode_base64("first\n", ''));
ok PushJobs::Stack::wait_for(10, sub {
    $stack->psql('pushjobs', "SELECT count(*) FROM pushjobs.job_output_chunk"
                 . " WHERE job_id = '$id' AND node_name = 'ghost'") == 1
}, 0.1), 'a chunk sent before the ack_run is stored (the node still ready)';
PushJobs::Engine::say_($g, 'ack_run', $id);
PushJobs::Engine::say_($g, 'output', $id, stream => 'stdout', offset => 6,
                       data => MIME::Base64::encode_base64("second\n", ''));
ok PushJobs::Stack::wait_for(10, sub {
    $stack->node_output($id, 'ghost', 'stdout') eq "first\nsecond\n"
}, 0.1), '  and the next after it: no gap';
PushJobs::Engine::say_($g, 'succeeded', $id, exit_status => 0,
                       stdout => MIME::Base64::encode_base64("first\nsecond\n", ''),
                       stderr => '');
is $stack->wait_job($id, 30)->{status}, 'complete', '  the job completes';
my ($early) = streamed(grep { ($_->{json}{node} // '') eq 'ghost' }
                       feed($id)->until_event('job_complete', 30));
is $early->{stdout}, "first\nsecond\n", '  its feed has both chunks once';

# --- a short final report --------------------------------------------------
# A final report leaves out what its agent streamed and names where its own
# bytes start (stdout_offset, stderr_offset): the server builds the output
# from the stored chunks, or, when one of them is not stored, asks for the
# whole report (resend) and applies nothing until it comes.

sub b64 { MIME::Base64::encode_base64($_[0], '') }

sub ghost_job {
    my $id = $stack->start_job({ command => 'chef-client', nodes => ['ghost'],
                                 capture_output => JSON::PP::true });
    PushJobs::Engine::expect($g, 'commit', $id) or die 'no commit';
    PushJobs::Engine::say_($g, 'ack_commit', $id);
    PushJobs::Engine::expect($g, 'run', $id) or die 'no run';
    PushJobs::Engine::say_($g, 'ack_run', $id);
    return $id;
}

sub ghost_chunk {
    my ($id, $stream, $off, $data) = @_;
    PushJobs::Engine::say_($g, 'output', $id, stream => $stream,
                           offset => $off, data => b64($data));
}

sub ghost_chunks {
    my ($id, $n) = @_;
    return PushJobs::Stack::wait_for(10, sub {
        $stack->psql('pushjobs', "SELECT count(*) FROM pushjobs."
                     . "job_output_chunk WHERE job_id = '$id'") == $n
    }, 0.1);
}

$id = ghost_job();
ghost_chunk($id, 'stdout', 0, "one\n");
ghost_chunk($id, 'stderr', 0, "warn\n");
ok ghost_chunks($id, 2), 'short report: two chunks streamed and stored';
PushJobs::Engine::say_($g, 'succeeded', $id, exit_status => 0,
                       stdout_offset => 4, stdout => b64("two\n"),
                       stderr_offset => 5, stderr => '');
ok PushJobs::Engine::expect($g, 'ack', $id), '  the short report is acked';
is $stack->wait_job($id, 30)->{status}, 'complete', '  the job completes';
is $stack->node_output($id, 'ghost', 'stdout'), "one\ntwo\n",
    '  stdout: the streamed chunk, then the report\'s bytes';
is $stack->node_output($id, 'ghost', 'stderr'), "warn\n",
    '  stderr: the streamed chunk';
($early) = streamed(grep { ($_->{json}{node} // '') eq 'ghost' }
                    feed($id)->until_event('job_complete', 30));
is_deeply $early, { stdout => "one\ntwo\n", stderr => "warn\n" },
    '  the feed has every byte once';

$id = ghost_job();
ghost_chunk($id, 'stdout', 0, "one\n");
ok ghost_chunks($id, 1), 'a chunk lost: one of two chunks stored';
PushJobs::Engine::say_($g, 'succeeded', $id, exit_status => 0,
                       stdout_offset => 8, stdout => b64("three\n"),
                       stderr => '');
ok PushJobs::Engine::expect($g, 'resend', $id),
    '  the short report is answered with resend';
is_deeply PushJobs::Engine::nodes_of($id), { running => ['ghost'] },
    '  and not applied: the node still runs';
PushJobs::Engine::say_($g, 'succeeded', $id, exit_status => 0,
                       stdout => b64("one\ntwo\nthree\n"), stderr => '');
ok PushJobs::Engine::expect($g, 'ack', $id), '  the whole report is acked';
is $stack->wait_job($id, 30)->{status}, 'complete', '  the job completes';
is $stack->node_output($id, 'ghost', 'stdout'), "one\ntwo\nthree\n",
    '  with the whole report\'s output';

$id = ghost_job();
PushJobs::Engine::say_($g, 'failed', $id, exit_status => 1,
                       stdout_offset => -3, stdout => '', stderr => '');
ok PushJobs::Engine::expect($g, 'resend', $id),
    'a report with a bad offset is answered with resend';
PushJobs::Engine::say_($g, 'failed', $id, exit_status => 1,
                       stdout => b64("x\n"), stderr => '');
ok PushJobs::Engine::expect($g, 'ack', $id), '  the whole report is acked';
is $stack->wait_job($id, 30)->{nodes}{failed}[0], 'ghost',
    '  and applied: the node failed';

$stack->stop;
done_testing;
