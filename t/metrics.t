# GET /pushy/_metrics: the Prometheus text exposition of a front end with
# two workers, checked by promtool (Debian's prometheus package) at each
# step, and its figures moving as the stack does: agents connecting and
# leaving, a job with captured output, REST requests, PostgreSQL queries,
# the key cache and the Chef API, an event feed opened and closed; a
# worker killed (its slot's gauges stop counting, its counters stay) and
# a reload (the counters go on).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempfile);
use Test::More;
use PushJobs::Stack;
use PushJobs::SSE;
use PushJobs::Fault qw(worker_pids kill_worker);

my $promtool = `sh -c 'command -v promtool'`;
chomp $promtool;
ok $promtool, 'promtool is installed (stack/install-deps: prometheus)'
    or BAIL_OUT('no promtool');

my $stack = PushJobs::Stack->new(agents => 2, workers => 2);
$stack->start;

my $org = $stack->org;

# {name{labels} => value} of one scrape, and its raw text
sub scrape {
    my $res = $stack->http->get($stack->url . '/pushy/_metrics');
    return (undef, $res) unless $res->{status} == 200;
    my %m;
    for (split /\n/, $res->{content}) {
        next if /^#/;
        my ($k, $v) = /^(\S+) (\S+)$/ or return (undef, $res);
        $m{$k} = $v;
    }
    return (\%m, $res);
}

# promtool's verdict on the text: '' when it finds nothing to say
sub promtool_check {
    my ($text) = @_;
    my ($fh, $file) = tempfile(DIR => $stack->{dir}, SUFFIX => '.prom');
    print $fh $text;
    close $fh;
    my $out = `$promtool check metrics < $file 2>&1`;
    return $? == 0 ? $out : "exit $?: $out";
}

sub value {
    my ($key) = @_;
    my ($m) = scrape();
    return $m ? $m->{$key} // 0 : -1;
}

sub wait_value {
    my ($key, $want) = @_;
    PushJobs::Stack::wait_for(15, sub { value($key) == $want }, 0.1);
}

my ($m, $res) = scrape();
ok $m, 'GET /pushy/_metrics: 200, every line a sample or a comment'
    or diag explain $res;
like $res->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4},
    '  the text exposition format\'s content type';
is promtool_check($res->{content}), '', '  promtool check metrics: clean';
is $m->{pushjobs_worker_processes}, 2, '  two worker processes';

ok wait_value('pushjobs_agents_connected{transport="websocket"}', 2),
    'two agents connected by websocket, summed over the workers';
is value('pushjobs_agents_connected{transport="long_poll"}'), 0,
    '  none by long-poll';

my $res2 = $stack->http->request('POST', $stack->url . '/pushy/_metrics',
                                  { content => '' });
is $res2->{status}, 405, 'POST: 405';

# --- a job ----------------------------------------------------------------

($m) = scrape();
my %before = %$m;

my $id = $stack->start_job({ command => 'echo hello',
                             nodes => [ $stack->agent_names ],
                             capture_output => JSON::PP::true });
my $job = $stack->wait_job($id, 30);
is $job->{status}, 'complete', 'a job with captured output completes';

sub moved {
    my ($key, $min) = @_;
    my ($now) = scrape();
    my $d = ($now->{$key} // 0) - ($before{$key} // 0);
    cmp_ok $d, '>=', $min, "  $key: +$d" or diag "before "
        . ($before{$key} // 'none') . ", now " . ($now->{$key} // 'none');
}

moved('pushjobs_jobs_started_total', 1);
# counted once by the front end, not once per worker
ok PushJobs::Stack::wait_for(10, sub {
    value('pushjobs_jobs_ended_total{status="complete"}')
    - ($before{'pushjobs_jobs_ended_total{status="complete"}'} // 0) == 1
}, 0.1), '  pushjobs_jobs_ended_total{status="complete"}: +1, once for the '
        . 'two workers';
sub grew_by {
    my ($key, $n) = @_;
    PushJobs::Stack::wait_for(10, sub {
        value($key) - ($before{$key} // 0) == $n
    }, 0.1);
}

ok grew_by('pushjobs_job_nodes_ended_total{status="succeeded"}', 2),
    '  pushjobs_job_nodes_ended_total{status="succeeded"}: +2, once';
moved('pushjobs_agent_messages_total{type="ack_commit"}', 2);
moved('pushjobs_agent_messages_total{type="ack_run"}', 2);
moved('pushjobs_agent_messages_total{type="succeeded"}', 2);
moved('pushjobs_output_bytes_total', 2 * length "hello\n");
moved('pushjobs_http_requests_total{route="jobs",code="2xx"}', 1);
moved('pushjobs_http_requests_total{route="job",code="2xx"}', 1);
moved('pushjobs_http_request_duration_seconds_count{route="jobs"}', 1);
moved('pushjobs_http_request_duration_seconds_bucket{route="jobs",le="+Inf"}',
      1);
moved('pushjobs_postgres_queries_total{result="ok"}', 5);
moved('pushjobs_postgres_query_duration_seconds_count', 5);

($m, $res) = scrape();
cmp_ok $m->{pushjobs_key_cache_hits_total}
       + $m->{pushjobs_key_cache_misses_total}, '>=', 2,
    'the key cache was asked';
cmp_ok $m->{'pushjobs_chef_requests_total{result="ok"}'}, '>=', 1,
    'Chef API requests counted';
cmp_ok $m->{'pushjobs_chef_request_duration_seconds_count'}, '>=', 1,
    '  and timed';
is promtool_check($res->{content}), '', '  promtool check metrics: clean';

# the histogram is cumulative and its count is its +Inf bucket
my @b = map { $m->{"pushjobs_postgres_query_duration_seconds_bucket{le=\"$_\"}"} }
        qw(0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 +Inf);
is scalar(grep { defined } @b), 12, 'the query histogram has 12 buckets';
is_deeply [ sort { $a <=> $b } @b ], \@b, '  cumulative';
is $b[-1], $m->{pushjobs_postgres_query_duration_seconds_count},
    '  +Inf equals the count';

# --- transitions the server makes: run_timeout ------------------------------

($m) = scrape();
%before = %$m;
my $slow = $stack->start_job({ command => 'sleep 30',
                               nodes => [ $stack->agent_names ],
                               run_timeout => 1 });
is $stack->wait_job($slow, 30)->{status}, 'timed_out',
    'a job past its run_timeout: timed_out';
ok grew_by('pushjobs_jobs_ended_total{status="timed_out"}', 1),
    '  pushjobs_jobs_ended_total{status="timed_out"}: +1';
ok grew_by('pushjobs_job_nodes_ended_total{status="timed_out"}', 2),
    '  pushjobs_job_nodes_ended_total{status="timed_out"}: +2, made by '
    . 'the server';
is value('pushjobs_job_nodes_ended_total{status="succeeded"}'),
   $before{'pushjobs_job_nodes_ended_total{status="succeeded"}'},
    '  none succeeded';

# --- a feed -----------------------------------------------------------------

my $feed = PushJobs::SSE->open($stack,
    "/organizations/$org/pushy/job_status_feed");
is $feed->status, 200, 'the org\'s feed opened';
ok wait_value('pushjobs_feeds_open', 1), '  pushjobs_feeds_open: 1';
$feed->close;
ok wait_value('pushjobs_feeds_open', 0), '  closed: 0';

# --- an agent leaves --------------------------------------------------------

($m) = scrape();
%before = %$m;
$stack->stop_agent('node2');
ok wait_value('pushjobs_agents_connected{transport="websocket"}', 1),
    'an agent stopped: one connected';
($m) = scrape();
my $closed = 0;
$closed += $m->{$_} - ($before{$_} // 0)
    for grep { /^pushjobs_agent_channels_closed_total/ } keys %$m;
cmp_ok $closed, '>=', 1, '  a channel close counted';
$stack->start_agent('node2');
ok $stack->wait_online(['node2'], 30), '  started again';
ok wait_value('pushjobs_agents_connected{transport="websocket"}', 2),
    '  two connected';

# --- a worker killed ---------------------------------------------------------

($m) = scrape();
my $started = $m->{pushjobs_jobs_started_total};
my @w = worker_pids($stack);
ok kill_worker($stack, $w[0]), "worker $w[0] killed, another started";
ok $stack->wait_online([ $stack->agent_names ], 30), '  agents online';
ok wait_value('pushjobs_agents_connected{transport="websocket"}', 2),
    '  two agents connected: the dead worker\'s gauges do not count';
# the new worker takes its slot when it has started, which can come after
# both agents are back through the other one (under ASan, CI)
ok wait_value('pushjobs_worker_processes', 2), '  two worker processes'
    or diag 'pushjobs_worker_processes: ' . value('pushjobs_worker_processes');
is value('pushjobs_jobs_started_total'), $started, '  counters kept';
ok wait_value('pushjobs_postgres_listening', 2),
    '  both workers listening (the new one once its LISTEN is up)';

# a job ended after the kill: still counted once
($m) = scrape();
my $ended = $m->{'pushjobs_jobs_ended_total{status="quorum_failed"}'} // 0;
my $qf = $stack->start_job({ command => 'true', nodes => ['ghost'] });
is $stack->wait_job($qf, 30)->{status}, 'quorum_failed',
    'a job on an unknown node: quorum_failed';
ok PushJobs::Stack::wait_for(10, sub {
    value('pushjobs_jobs_ended_total{status="quorum_failed"}') == $ended + 1
}, 0.1), '  counted once, by a worker alive';
ok PushJobs::Stack::wait_for(10, sub {
    value('pushjobs_job_nodes_ended_total{status="unavailable"}')
    == ($m->{'pushjobs_job_nodes_ended_total{status="unavailable"}'} // 0) + 1
}, 0.1), '  its node, unavailable (made by the server): counted once';
$started = value('pushjobs_jobs_started_total');

# --- a reload ----------------------------------------------------------------

my $master = $stack->{procs}{'nginx:fe1'};
@w = worker_pids($stack);
kill 'HUP', $master;
ok PushJobs::Stack::wait_for(30, sub {
    my %old = map { $_ => 1 } @w;
    my @new = worker_pids($stack);
    @new == 2 && !grep { $old{$_} } @new;
}, 0.1), 'reloaded: new workers';
ok $stack->wait_online([ $stack->agent_names ], 30), '  agents online';
ok wait_value('pushjobs_worker_processes', 2), '  two worker processes';
is value('pushjobs_jobs_started_total'), $started,
    '  counters kept across the reload';
ok wait_value('pushjobs_agents_connected{transport="websocket"}', 2),
    '  two agents connected';

($m, $res) = scrape();
is promtool_check($res->{content}), '', 'promtool check metrics: clean';
note $res->{content};

$stack->stop;
done_testing;
