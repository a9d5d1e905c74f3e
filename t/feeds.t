# The Server-Sent Events feeds of contract §5: a job's feed (every event
# sequence of §5.1, Last-Event-ID, the linger then the summary, 404, 406)
# and the org's feed (org-N ids, retention, start_of_history), read as a
# stream over TLS, chunk by chunk.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time);
use PushJobs::Stack;
use PushJobs::SSE;
use PushJobs::WS;

my $json = PushJobs::Stack::json();

my $stack = PushJobs::Stack->new(agents => 2, workers => 2,
    nginx_extra => 'pushjobs_voting_timeout 2s; pushjobs_sweep_interval 200ms; '
                   . 'pushjobs_feed_linger 8s; pushjobs_org_feed_retention 90s;',
    client_rb_extra => 'allowed_users ["root"]');
$stack->start;

my $org = $stack->org;
my $feed = "/organizations/$org/pushy/job_status_feed";
my $TS = qr/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z$/;

sub names { [ map { $_->{event} } @_ ] }

sub job_feed { PushJobs::SSE->open($stack, "$feed/$_[0]", @_[1 .. $#_]) }

# every event of a job's feed until the stream ends
sub job_events {
    my ($id, %a) = @_;
    my $sse = job_feed($id, %a);
    my @ev = $sse->until_event('job_complete', 30);
    push @ev, $sse->next_event(1) // () unless @ev;
    return ($sse, @ev);
}

# --- refusals ---------------------------------------------------------------

my $sse = job_feed('0' x 32, accept => 'application/json');
is $sse->status, 406, 'job feed without Accept: text/event-stream: 406';
$sse = PushJobs::SSE->open($stack, $feed, accept => undef);
is $sse->status, 406, 'org feed without an Accept header: 406';

$sse = job_feed('0' x 32);
is $sse->status, 404, 'unknown job: 404';
$sse = job_feed('not-a-job-id');
is $sse->status, 404, 'malformed job id: 404';

my $res = $stack->request('POST', "$feed/" . ('0' x 32),
                          headers => { Accept => 'text/event-stream' });
is $res->{status}, 405, 'POST to a job feed: 405';
$res = $stack->request('GET', $feed, unsigned => 1,
                       headers => { Accept => 'text/event-stream' });
is $res->{status}, 400, 'unsigned org feed request: 400 (missing headers)';

# --- the org feed, opened before any job: only future events ---------------

my $orgfeed = PushJobs::SSE->open($stack, $feed);
is $orgfeed->status, 200, 'org feed: 200';
is $orgfeed->header('Content-Type'), 'text/event-stream', '  text/event-stream';
is $orgfeed->header('X-Accel-Buffering'), 'no', '  X-Accel-Buffering: no';
ok $orgfeed->chunked, '  chunked transfer-encoding';
ok defined $orgfeed->header('X-Ops-Server-API-Version'),
    '  X-Ops-Server-API-Version header';
is $orgfeed->next_event(0.5), undef, '  no backlog without Last-Event-ID';

# the other org's feed must never see this org's jobs
my $otherfeed = PushJobs::SSE->open($stack,
    '/organizations/other/pushy/job_status_feed', user => 'dave');
is $otherfeed->status, 200, "another org's feed: 200";

# --- success, watched live ----------------------------------------------------

my $id = $stack->start_job({ command => 'sleep 1', nodes => ['node1'] });
$sse = job_feed($id);
is $sse->status, 200, 'job feed: 200';
is $sse->header('Content-Type'), 'text/event-stream', '  text/event-stream';
is $sse->header('X-Accel-Buffering'), 'no', '  X-Accel-Buffering: no';
ok $sse->chunked, '  chunked';
ok defined $sse->header('X-Ops-Server-API-Version'),
    '  X-Ops-Server-API-Version header';

my @ev = $sse->until_event('job_complete', 30);
is_deeply names(@ev), [qw(start quorum_vote quorum_succeeded run_start
                          run_complete job_complete)],
    'success: start, quorum_vote, quorum_succeeded, run_start, run_complete, '
    . 'job_complete' or diag explain \@ev;
is_deeply [ map { $_->{id} } @ev ], [ map { "job-$_" } 1 .. 6 ],
    '  ids job-1 .. job-6';
ok !(grep { $_->{raw} !~ /\Aevent: \S+\nid: \S+\ndata: \{.*\}\z/s } @ev),
    '  each event is event:, id:, data: lines';
ok !(grep { $_->{data} !~ /\A\{\s*"timestamp"\s*:/ } @ev),
    '  timestamp is the first data key';
ok !(grep { ($_->{json}{timestamp} // '') !~ $TS } @ev),
    '  timestamps are YYYY-MM-DD HH:MM:SS.uuuuuuZ';
my %start = %{ $ev[0]{json} };
delete $start{timestamp};
is_deeply \%start, { command => 'sleep 1', run_timeout => 3600, quorum => 1,
                     node_count => 1, user => 'alice',
                     capture => JSON::PP::false },
    '  start data' or diag explain \%start;
is_deeply [ @{ $ev[1]{json} }{qw(node status)} ], [qw(node1 success)],
    '  quorum_vote node1 success';
is_deeply [ sort keys %{ $ev[2]{json} } ], ['timestamp'],
    '  quorum_succeeded has no fields';
is $ev[3]{json}{node}, 'node1', '  run_start node1';
is_deeply [ @{ $ev[4]{json} }{qw(node status)} ], [qw(node1 success)],
    '  run_complete node1 success';
is $ev[5]{json}{status}, 'complete', '  job_complete complete';
ok $sse->wait_end(3), '  the stream ends with the job';
ok $sse->done, '  with the last chunk';
my $finished_at = time;

# --- the finished job, within the linger ----------------------------------------

($sse, @ev) = job_events($id);
is_deeply names(@ev), [qw(start quorum_vote quorum_succeeded run_start
                          run_complete job_complete)],
    'finished job within the linger: every event again';
ok $sse->wait_end(2), '  and the connection closes at once';

($sse, @ev) = job_events($id, last_event_id => 'job-3');
is_deeply [ map { $_->{id} } @ev ], [qw(job-4 job-5 job-6)],
    'Last-Event-ID job-3: the events after it';
ok $sse->wait_end(2), '  then the end';

($sse, @ev) = job_events($id, last_event_id => 'job-99');
is_deeply [ map { $_->{id} } @ev ], [ map { "job-$_" } 1 .. 6 ],
    'unknown Last-Event-ID: from the beginning';

($sse, @ev) = job_events($id, last_event_id => 'org-2');
is scalar @ev, 6, "another feed's id: from the beginning";

$sse = job_feed($id, last_event_id => 'job-6');
is $sse->next_event(2), undef, 'Last-Event-ID of the last event: nothing';
ok $sse->wait_end(2), '  and the connection closes at once';

# --- the org feed saw the job's start and job_complete ----------------------------

my @oev = $orgfeed->events(2, 10);
is_deeply names(@oev), [qw(start job_complete)],
    'org feed: start and job_complete only';
ok !(grep { ($_->{id} // '') !~ /^org-\d+$/ } @oev), '  ids org-N';
ok !(grep { $_->{data} !~ /\A\{\s*"timestamp"\s*:\s*"[^"]*"\s*,\s*"job"\s*:/ }
          @oev), '  job is the key right after timestamp';
is $oev[0]{json}{job}, $id, '  job id';
is $oev[0]{json}{command}, 'sleep 1', '  start data';
is $oev[1]{json}{status}, 'complete', '  job_complete status';
my ($n1) = $oev[0]{id} =~ /(\d+)/;
my ($n2) = $oev[1]{id} =~ /(\d+)/;
ok $n2 > $n1, '  ids increase';

# --- every other sequence of §5.1 ---------------------------------------------------

# a job with every option: the start event names them
$id = $stack->start_job({ command => 'echo opts', nodes => ['node2'],
                          capture_output => JSON::PP::true,
                          dir => '/tmp', env => { A => 'b' },
                          file => 'raw:hello', run_timeout => 30,
                          user => 'root' });
($sse, @ev) = job_events($id);
%start = %{ $ev[0]{json} // {} };
delete $start{timestamp};
is_deeply \%start, { command => 'echo opts', run_timeout => 30, quorum => 1,
                     node_count => 1, user => 'alice', job_user => 'root',
                     dir => '/tmp', env => { A => 'b' },
                     file_specified => JSON::PP::true,
                     capture => JSON::PP::true },
    'start with options: job_user, dir, env, file_specified, capture'
    or diag explain \%start;
is $ev[-1]{json}{status}, 'complete', '  job complete';

# unknown node
$id = $stack->start_job({ command => 'true', nodes => ['no-such-node'] });
($sse, @ev) = job_events($id);
is_deeply [ map { [ $_->{event}, $_->{json}{status} // () ] } @ev ],
    [ ['start'], [qw(quorum_vote down)], ['rehab'],
      [qw(job_complete quorum_failed)] ],
    'unknown node: start, quorum_vote(down), rehab, job_complete(quorum_failed)'
    or diag explain \@ev;
is $ev[2]{json}{node}, 'no-such-node', '  rehab names the node';

# nack: a command outside the whitelist
$id = $stack->start_job({ command => 'rm -rf /', nodes => ['node1'] });
$stack->wait_job($id, 30);
($sse, @ev) = job_events($id);
is_deeply [ map { [ $_->{event}, $_->{json}{status} // () ] } @ev ],
    [ ['start'], [qw(quorum_vote failure)],
      [qw(job_complete quorum_failed)] ],
    'nack: start, quorum_vote(failure), job_complete(quorum_failed)'
    or diag explain \@ev;

# a scripted agent for ghost, to ignore or refuse what a real agent would not
my ($ws, $status) = PushJobs::WS->connect($stack, 'ghost',
    extra => PushJobs::WS::frame(1,
        '{"type":"hello","v":1,"agent":"feeds.t","jobs":[]}'));
is $status, 101, 'scripted agent for ghost connected';
ok $stack->wait_online(['ghost'], 10), '  ghost online';

# next message of a type for a job, answering pings on the way
sub ghost_wait {
    my ($type, $job) = @_;
    my $deadline = time + 15;
    while (time < $deadline) {
        my $text = $ws->read_text($deadline - time) // return undef;
        my $m = eval { $json->decode($text) } or next;
        return $m if $m->{type} eq $type && ($m->{job_id} // '') eq $job;
    }
    return undef;
}

sub ghost_send {
    my ($type, $job) = @_;
    $ws->send_text($json->encode({ type => $type, v => 1, job_id => $job,
                                   reason => 'feeds.t' }));
}

# ignored commit: the voting timeout (2 s here)
$id = $stack->start_job({ command => 'true', nodes => ['ghost'] });
ok ghost_wait('commit', $id), 'ghost got the commit, ignores it';
$sse = job_feed($id);
@ev = $sse->until_event('job_complete', 20);
is_deeply [ map { [ $_->{event}, $_->{json}{status} // () ] } @ev ],
    [ ['start'], [qw(quorum_vote voting_timeout)],
      [qw(job_complete quorum_failed)] ],
    'ignored commit: start, quorum_vote(voting_timeout), '
    . 'job_complete(quorum_failed)' or diag explain \@ev;

# run never acked: the run timeout
$id = $stack->start_job({ command => 'true', nodes => ['ghost'],
                          run_timeout => 1 });
ok ghost_wait('commit', $id), 'ghost got the commit';
ghost_send('ack_commit', $id);
ok ghost_wait('run', $id), '  acked it, got the run, ignores it';
$sse = job_feed($id);
@ev = $sse->until_event('job_complete', 20);
is_deeply [ map { [ $_->{event}, $_->{json}{status} // () ] } @ev ],
    [ ['start'], [qw(quorum_vote success)], ['quorum_succeeded'],
      [qw(job_complete timed_out)] ],
    'run never acked: start, quorum_vote(success), quorum_succeeded, '
    . 'job_complete(timed_out)' or diag explain \@ev;

# nack_run
$id = $stack->start_job({ command => 'true', nodes => ['ghost'] });
ok ghost_wait('commit', $id), 'ghost got the commit';
ghost_send('ack_commit', $id);
ok ghost_wait('run', $id), '  acked it, got the run';
ghost_send('nack_run', $id);
$sse = job_feed($id);
@ev = $sse->until_event('job_complete', 20);
is_deeply [ map { [ $_->{event}, $_->{json}{status} // () ] } @ev ],
    [ ['start'], [qw(quorum_vote success)], ['quorum_succeeded'], ['rehab'],
      [qw(run_complete run_nacked)], [qw(job_complete complete)] ],
    'nack_run: ..., quorum_succeeded, rehab, run_complete(run_nacked), '
    . 'job_complete(complete)' or diag explain \@ev;
$ws->close;

# --- after the linger: one summary event --------------------------------------------

my $first = $stack->start_job({ command => 'true', nodes => ['node1'] });
my $done = $stack->wait_job($first, 30);
my $summary;
ok PushJobs::Stack::wait_for(15, sub {
    my $s = job_feed($first, last_event_id => 'job-2');
    my $e = $s->next_event(5) or return 0;
    return 0 unless $e->{event} eq 'summary';
    $summary = $e;
    return $s->wait_end(2);
}, 0.5), 'a job finished longer ago than the linger (8 s here): a summary, '
        . 'then the end';
is $summary->{id}, 'job-1', '  id job-1, Last-Event-ID ignored';
like $summary->{data}, qr/\A\{\s*"timestamp"\s*:/, '  timestamp first';
like $summary->{json}{timestamp} // '', $TS, '  timestamp format';
my %sum = %{ $summary->{json} // {} };
delete $sum{timestamp};
is_deeply \%sum, $stack->job($first), '  data: the named-job document'
    or diag explain \%sum;

# --- the org feed: Last-Event-ID, start_of_history, retention --------------------

@oev = $orgfeed->events(14, 10);
is scalar @oev, 14, 'org feed: a start and a job_complete for each of 7 jobs';
ok !(grep { $_->{event} !~ /^(start|job_complete)$/ } @oev),
    '  nothing but start and job_complete';
is $otherfeed->next_event(0.2), undef, "the other org's feed saw none of it";

my $mid = $oev[9]{id};
my $resumed = PushJobs::SSE->open($stack, $feed, last_event_id => $mid);
my @rev = $resumed->events(4, 10);
is_deeply [ map { $_->{id} } @rev ], [ map { $_->{id} } @oev[10 .. 13] ],
    'org feed with a retained Last-Event-ID: the events after it';
is $resumed->next_event(0.3), undef, '  then waits for new ones';

my $hist = PushJobs::SSE->open($stack, $feed, last_event_id => 'org-0');
my $soh = $hist->next_event(10);
is $soh->{event}, 'start_of_history', 'unknown Last-Event-ID: start_of_history';
is $soh->{id}, 'start_id', '  id start_id';
is_deeply [ keys %{ $soh->{json} // {} } ], ['timestamp'], '  only a timestamp';
my @hev = $hist->events(16, 10);
is scalar @hev, 16, '  then every retained event';
is_deeply [ map { $_->{id} } @hev[2 .. 15] ], [ map { $_->{id} } @oev ],
    '  in order';

# retention (pushjobs_org_feed_retention 90s here): an event 75 s old is
# still replayed, one 2 minutes old is neither replayed nor kept
my ($old) = $hev[0]{id} =~ /(\d+)/;
my ($kept) = $hev[1]{id} =~ /(\d+)/;
$stack->psql('pushjobs', "UPDATE pushjobs.org_events SET created_at = "
             . "now() - interval '2 minutes' WHERE id = $old");
$stack->psql('pushjobs', "UPDATE pushjobs.org_events SET created_at = "
             . "now() - interval '75 seconds' WHERE id = $kept");
$hist = PushJobs::SSE->open($stack, $feed, last_event_id => 'bogus');
is $hist->next_event(10)->{event}, 'start_of_history',
    'retention: start_of_history';
my $after = $hist->next_event(10);
isnt $after->{id}, "org-$old", '  the expired event is not replayed';
is $after->{id}, "org-$kept", '  one 75 s old is (retention 90 s)';
$hist = PushJobs::SSE->open($stack, $feed, last_event_id => "org-$old");
is $hist->next_event(10)->{event}, 'start_of_history',
    '  an expired Last-Event-ID: start_of_history';
ok PushJobs::Stack::wait_for(10, sub {
    $stack->psql('pushjobs',
        "SELECT count(*) FROM pushjobs.org_events WHERE id = $old") == 0;
}, 0.2), '  the sweeper purged it';
is $stack->psql('pushjobs',
       "SELECT count(*) FROM pushjobs.org_events WHERE id = $kept") + 0, 1,
   '  and kept the younger one';

# live events still reach every open org feed, across workers
$id = $stack->start_job({ command => 'true', nodes => ['node2'] });
is_deeply names($hist->events(17, 20)),
    [ (map { $_->{event} } @hev[1 .. 15]), qw(start job_complete) ],
    'a feed opened with history streams new events after it';
my @live = $orgfeed->events(2, 20);
is_deeply [ map { $_->{json}{job} } @live ], [ $id, $id ],
    'the first org feed streams them too';

# --- keepalive: a comment every 15 s on an idle feed ------------------------------

ok $orgfeed->wait_comment(20), 'idle org feed: a keepalive comment';
is(($orgfeed->comments)[0], ':keepalive', '  ":keepalive"');
$res = $stack->request('GET', '/pushy/_status', unsigned => 1);
is $res->{status}, 200, 'server still fine';

$_->close for $orgfeed, $otherfeed, $resumed, $hist;

# --- org feed ids follow commit order ------------------------------------------
# A reader resumes after the last id it saw: an org event inserted first but
# committed last must not keep the smaller id (it would be skipped).

{
    my $q = "INSERT INTO pushjobs.org_events (org, job_id, name, data) "
          . "VALUES ('order-test', '" . ('0' x 32) . "', '%s', '{}')";
    open(my $tx, '|-', 'psql', '-X', '-q', '-o', '/dev/null', '-h',
         '127.0.0.1', '-p', $stack->{pg_port}, '-U', 'pushjobs', '-d',
         'pushjobs') or die "psql: $!";
    my $old = select $tx; $| = 1; select $old;
    print $tx "SET application_name = 'order-test';\nBEGIN;\n"
              . sprintf($q, 'first') . ";\n";
    ok PushJobs::Stack::wait_for(10, sub {
        $stack->psql('pushjobs', "SELECT count(*) FROM pg_stat_activity
            WHERE application_name = 'order-test'
              AND state = 'idle in transaction'") == 1 }, 0.1),
        'org event "first" inserted, its transaction open';
    $stack->psql('pushjobs', sprintf($q, 'second'));
    print $tx "COMMIT;\n";
    close $tx;
    my %id = map { split /\t/ } split /\n/, $stack->psql('pushjobs',
        "SELECT name, id FROM pushjobs.org_events WHERE org = 'order-test'");
    cmp_ok $id{first}, '>', $id{second},
        '  "second", committed first, has the smaller id';
    $stack->psql('pushjobs',
                 "DELETE FROM pushjobs.org_events WHERE org = 'order-test'");
}

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
