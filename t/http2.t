# Every endpoint over HTTP/2 (ALPN h2 on the TLS listener), with curl
# --http2: the REST routes knife-push and scripts use, the job feed and the
# org feed (events, Last-Event-ID, the job feed closing with its job), and
# the agent channel endpoints, which HTTP/2 cannot carry (a websocket
# upgrade, a long-poll held on a shared connection): 505.  HTTP/1.1 on the
# same listener still works, and the error log stays clean.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Select;
use Time::HiRes qw(time);
use PushJobs::Stack;
use PushJobs::Fault qw(worker_pids);

my $json = PushJobs::Stack::json();

my $curl_v = `curl --version 2>/dev/null` // '';
plan skip_all => 'curl without HTTP/2 (nghttp2)'
    unless $curl_v =~ /\bHTTP2\b/ && $curl_v =~ /nghttp2/;

my $stack = PushJobs::Stack->new(agents => 2, workers => 2, http2 => 1,
    nginx_extra => 'pushjobs_voting_timeout 2s; pushjobs_sweep_interval 200ms; '
                   . 'pushjobs_feed_linger 2s;',
    client_rb_extra => 'allowed_users ["root"]');
$stack->start;

my $org = $stack->org;
my $base = "/organizations/$org/pushy";
my $feed = "$base/job_status_feed";
my $n = 0;

# curl's argument list for request_args()'s URL and headers
sub curl_args {
    my ($method, $path, %a) = @_;
    my ($url, $opt) = $stack->request_args($method, $path, %a);
    my @args = ('curl', '-sS', '--http2', '--cacert',
                $stack->dir . '/tls/server.crt', '-X', $method);
    push @args, '-H', "$_: $opt->{headers}{$_}"
        for sort keys %{ $opt->{headers} };
    push @args, '--data-binary', $opt->{content} if defined $opt->{content};
    return (@args, $url);
}

# h2(METHOD, PATH, request()'s options): { version, status, headers,
# content, json } of one request over HTTP/2
sub h2 {
    my ($method, $path, %a) = @_;
    my $d = $stack->dir;
    $n++;
    my @args = curl_args($method, $path, %a);
    splice @args, 1, 0, '-D', "$d/h2-$n.head", '-o', "$d/h2-$n.body",
                        '-w', '%{http_version} %{http_code}',
                        '--max-time', $a{max_time} // 30;
    open my $fh, '-|', @args or die "curl: $!";
    my $w = do { local $/; <$fh> } // '';
    close $fh;
    my ($version, $status) = split ' ', $w;
    my %h;
    for (split /\r?\n/, PushJobs::Stack::slurp("$d/h2-$n.head")) {
        $h{lc $1} = $2 if /^([^:\s]+):\s*(.*)$/;
    }
    my $res = { version => $version // '', status => $status // 0,
                headers => \%h,
                content => PushJobs::Stack::slurp("$d/h2-$n.body") };
    $res->{json} = eval { $json->decode($res->{content}) }
        if ($h{'content-type'} // '') =~ /json/;
    return $res;
}

# An SSE feed over HTTP/2: curl -N in the background, its body on a pipe.
sub h2_feed {
    my ($path, %a) = @_;
    my @args = curl_args('GET', $path, %a,
                         headers => { Accept => 'text/event-stream',
                                      %{ $a{headers} // {} } });
    splice @args, 1, 0, '-N', '--max-time', 60;
    my $pid = open my $fh, '-|', @args or die "curl: $!";
    return { pid => $pid, fh => $fh, buf => '', eof => 0 };
}

# feed_events(FEED, SECONDS, UNTIL): the events read within SECONDS, up to
# the event named UNTIL; each { event, id, data, json }
sub feed_events {
    my ($f, $secs, $until) = @_;
    my $deadline = time + $secs;
    my $sel = IO::Select->new($f->{fh});
    my @ev;
    while (1) {
        while ($f->{buf} =~ s/\A(.*?)\n\n//s) {
            my %e;
            for (split /\n/, $1) {
                $e{$1} = $2 if /^(event|id|data): ?(.*)$/;
            }
            next unless $e{event};
            $e{json} = eval { $json->decode($e{data} // '') };
            push @ev, \%e;
            return @ev if defined $until && $e{event} eq $until;
        }
        last if $f->{eof};
        my $left = $deadline - time;
        last if $left <= 0;
        $sel->can_read($left) or next;
        my $r = sysread $f->{fh}, $f->{buf}, 65536, length $f->{buf};
        $f->{eof} = 1 if !$r;
    }
    return @ev;
}

# feed_ends(FEED, SECONDS): the stream ended (curl saw the end of it)
sub feed_ends {
    my ($f, $secs) = @_;
    my $deadline = time + $secs;
    my $sel = IO::Select->new($f->{fh});
    while (!$f->{eof} && (my $left = $deadline - time) > 0) {
        $sel->can_read($left) or next;
        my $r = sysread $f->{fh}, $f->{buf}, 65536, length $f->{buf};
        $f->{eof} = 1 if !$r;
    }
    return $f->{eof};
}

sub feed_close {
    my ($f) = @_;
    kill 'TERM', $f->{pid} if $f->{pid};
    close $f->{fh};
    delete $f->{pid};
}

sub names { [ map { $_->{event} } @_ ] }

# --- the listener ----------------------------------------------------------

my $res = h2('GET', '/pushy/_status', unsigned => 1);
is $res->{version}, '2', 'curl --http2 negotiates h2 with the listener';
is $res->{status}, 200, '/pushy/_status over HTTP/2: 200';
like $res->{content}, qr/alive/, '  alive';

$res = $stack->request('GET', "$base/node_states");
is $res->{status}, 200, 'HTTP/1.1 on the same listener: 200';

# --- REST ------------------------------------------------------------------

$res = h2('GET', "$base/node_states");
is $res->{status}, 200, 'GET node_states: 200';
is_deeply [ sort map { $_->{node_name} } @{ $res->{json} // [] } ],
    [qw(node1 node2)], '  both nodes' or diag $res->{content};

$res = h2('GET', "$base/node_states/node1");
is $res->{status}, 200, 'GET node_states/node1: 200';
is $res->{json}{node_name}, 'node1', '  node1';

$res = h2('GET', "$base/config/node1", user => 'node1');
is $res->{status}, 200, 'GET config/node1 as node1: 200';

# the org feed, open before the job
my $orgfeed = h2_feed($feed);

$res = h2('POST', "$base/jobs",
          body => { command => 'echo h2', nodes => ['node1', 'node2'],
                    capture_output => JSON::PP::true });
is $res->{status}, 201, 'POST jobs: 201';
my $id = PushJobs::Stack::job_id_of($res);
like $id, qr/^[0-9a-f]{32}$/, '  a job id';

# the job feed, live
my $jf = h2_feed("$feed/$id");
my @ev = feed_events($jf, 30, 'job_complete');
is $ev[0]{event}, 'start', 'job feed over HTTP/2: start first'
    or diag explain \@ev;
is $ev[-1]{event}, 'job_complete', '  job_complete last';
is $ev[-1]{json}{status}, 'complete', '  complete';
is_deeply [ map { $_->{id} } @ev ], [ map { "job-$_" } 1 .. @ev ],
    '  ids job-1 .. job-N';
ok feed_ends($jf, 5), '  the feed closes when the job ends';
feed_close($jf);

$res = h2('GET', "$base/jobs/$id");
is $res->{status}, 200, 'GET jobs/ID: 200';
is $res->{json}{status}, 'complete', '  complete';

$res = h2('GET', "$base/jobs");
is $res->{status}, 200, 'GET jobs: 200';
ok((grep { $_->{id} eq $id } @{ $res->{json} // [] }), '  lists the job');

my $octet = { Accept => 'application/octet-stream' };
$res = h2('GET', "$base/jobs/$id/output/node1/stdout", headers => $octet);
is $res->{status}, 200, 'GET jobs/ID/output/node1/stdout: 200';
is $res->{content}, "h2\n", '  the output';
$res = h2('GET', "$base/jobs/$id/output/node1/stderr", headers => $octet);
is $res->{status}, 200, 'GET jobs/ID/output/node1/stderr: 200';

# resumption within the linger
$jf = h2_feed("$feed/$id", headers => { 'Last-Event-ID' => 'job-2' });
my @again = feed_events($jf, 10, 'job_complete');
is_deeply [ map { $_->{id} } @again ],
    [ map { $_->{id} } @ev[2 .. $#ev] ],
    'job feed, Last-Event-ID job-2: the events after it';
ok feed_ends($jf, 5), '  and it closes';
feed_close($jf);

# abort: a long job
$id = $stack->start_job({ command => 'sleep 30', nodes => ['node1'] });
PushJobs::Stack::wait_for(20, sub {
    (($stack->job($id) // {})->{status} // '') eq 'running';
});
$res = h2('POST', "$base/jobs/$id/abort");
ok $res->{status} =~ /^20[02]$/, 'POST jobs/ID/abort: 2xx'
    or diag "$res->{status} $res->{content}";
is(($stack->wait_job($id, 20) // {})->{status}, 'aborted',
   '  the job is aborted');

# the org feed saw both jobs
my @oev = feed_events($orgfeed, 10);
ok((grep { $_->{event} eq 'start' } @oev) >= 2,
   'org feed over HTTP/2: the jobs\' events') or diag explain names(@oev);
ok !(grep { ($_->{id} // '') !~ /^org-\d+$/ } @oev), '  org-N ids';
feed_close($orgfeed);

if (@oev > 1) {
    my $of = h2_feed($feed, headers => { 'Last-Event-ID' => $oev[0]{id} });
    my @rest = feed_events($of, 5, $oev[-1]{event});
    is $rest[0]{id}, $oev[1]{id},
        'org feed, Last-Event-ID: resumes after it';
    feed_close($of);
}

# --- a reload with an HTTP/2 feed open ----------------------------------------
# An HTTP/2 feed is a stream of a connection nginx does not see idle while it
# is open: the exiting worker must still close it and go at once, as with an
# HTTP/1.1 feed, not hold the reload until worker_shutdown_timeout.
{
    # resumed after its first event: the rest arrive at once, so it is open
    my $of = h2_feed($feed, headers => { 'Last-Event-ID' => $oev[0]{id} });
    ok scalar(feed_events($of, 10, $oev[-1]{event})),
        'reload: an org feed open over HTTP/2';
    my @old = worker_pids($stack);
    kill 'HUP', $stack->{procs}{'nginx:fe1'};
    ok feed_ends($of, 15), '  the exiting worker ends it';
    ok PushJobs::Stack::wait_for(15, sub {
        !grep { kill 0, $_ } @old }, 0.1),
        "  and the old workers (@old) exit at once";
    feed_close($of);
}

# --- the agent channel endpoints: not over HTTP/2 ---------------------------

{
    $res = h2('GET', "$base/agent", user => 'node1', max_time => 5,
              headers => { Upgrade => 'websocket', Connection => 'Upgrade',
                           'Sec-WebSocket-Version' => '13',
                           'Sec-WebSocket-Key' => 'dGhlIHNhbXBsZSBub25jZQ==' });
    is $res->{status}, 505, 'websocket upgrade request over HTTP/2: 505';

    $res = h2('POST', "$base/agent/poll", user => 'node1', max_time => 5,
              version => '1.3',
              body => { type => 'hello' });
    is $res->{status}, 505, 'long-poll over HTTP/2: 505';
}

# --- HTTP/1.1 after all that, and the log ----------------------------------

$res = $stack->request('GET', "$base/node_states/node2");
is $res->{status}, 200, 'HTTP/1.1 on the same listener still: 200';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
