# pushjobs_job_retention: the sweeper purges finished jobs (with their
# nodes, output and events) once they are older than the retention, and
# never touches a job still in flight.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 1, nginx_extra =>
    'pushjobs_job_retention 1h; pushjobs_sweep_interval 200ms;');
$stack->start;

my $org = $stack->org;

my $old = $stack->start_job({ command => 'echo old', nodes => ['node1'],
                              capture_output => JSON::PP::true });
is $stack->wait_job($old, 30)->{status}, 'complete', 'a job completes';
my $recent = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($recent, 30)->{status}, 'complete', 'another completes';
my $running = $stack->start_job({ command => 'sleep 20', nodes => ['node1'] });
ok PushJobs::Stack::wait_for(20, sub {
    ($stack->job($running) // {})->{status} eq 'running' }), 'a job runs';

# streamed output: chunk rows stay with their job (the bytes of its feed's
# output events), and a live row is left behind, as by a node that ended
# without a final report
$stack->psql('pushjobs', "INSERT INTO pushjobs.job_output_live"
             . " (job_id, node_name, stderr_len) VALUES ('$old', 'node1', 4);"
             . " INSERT INTO pushjobs.job_output_chunk"
             . " (job_id, node_name, stream, off, data) VALUES"
             . " ('$old', 'node1', 'stderr', 0, 'ab'),"
             . " ('$old', 'node1', 'stderr', 2, 'cd')");

# age two of them past the retention: only the finished one may go
$stack->psql('pushjobs', "UPDATE pushjobs.jobs SET updated_at = now() - "
             . "interval '2 hours' WHERE id IN ('$old', '$running')");

ok PushJobs::Stack::wait_for(20, sub {
    $stack->request('GET', "/organizations/$org/pushy/jobs/$old")->{status}
        == 404 }), 'the old finished job is purged';

my $left = $stack->psql('pushjobs',
    "SELECT (SELECT count(*) FROM pushjobs.job_nodes WHERE job_id = '$old')"
    . " + (SELECT count(*) FROM pushjobs.job_events WHERE job_id = '$old')"
    . " + (SELECT count(*) FROM pushjobs.job_output WHERE job_id = '$old')"
    . " + (SELECT count(*) FROM pushjobs.job_output_live"
    . "     WHERE job_id = '$old')"
    . " + (SELECT count(*) FROM pushjobs.job_output_chunk"
    . "     WHERE job_id = '$old')");
is $left + 0, 0, 'with its nodes, events, output and streamed chunks';

is $stack->job($recent)->{status}, 'complete', 'a recent job is kept';
is $stack->job($running)->{status}, 'running', 'a running job is kept';

like $stack->error_log, qr/purged 1 jobs past pushjobs_job_retention/,
    'the purge is logged';

my $res = $stack->request('POST',
    "/organizations/$org/pushy/jobs/$running/abort",
    body => { force => JSON::PP::true });
ok $res->{status} == 200 || $res->{status} == 202, 'abort the sleeper';
$stack->wait_job($running, 30);

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
