# pushjobs-agent never loses a result: the front end goes away while a job
# runs; the agent spools the final report, reconnects (backoff with jitter)
# and re-sends it; the server records it exactly once.  The agent signs the
# reconnect with the client key it loaded at start: the key's file is gone
# by then.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 1);
$stack->start;

my $org = $stack->org;
my ($node) = $stack->agent_names;
my $dir = $stack->agent_dir($node);

my $id = $stack->start_job({ command => 'sleep 3', nodes => [$node] });
ok PushJobs::Stack::wait_for(20, sub {
    my $j = $stack->job($id);
    $j && ($j->{nodes}{running} // [])->[0];
}), 'job running';

$stack->stop_nginx('fe1');
ok PushJobs::Stack::wait_for(20, sub {
    PushJobs::Stack::slurp("$dir/agent.log") =~ /job $id: exited with 0/ }),
    'the job ends while the front end is down';
# the agent logs the exit, then writes the report
ok PushJobs::Stack::wait_for(10, sub { -f "$dir/spool/$id.json" }),
    'its report waits in the spool';

# the key is read once, at start, not on each connect
my $key = $stack->user_key($node);
rename $key, "$key.away" or die "rename $key: $!";

$stack->start_nginx('fe1');
my $job = $stack->wait_job($id, 40);
is $job->{status}, 'complete', 'job complete after the reconnect';
is_deeply $job->{nodes}, { succeeded => [$node] }, 'node succeeded';
ok PushJobs::Stack::wait_for(10, sub { !-e "$dir/spool/$id.json" }),
    'the report left the spool on the server\'s ack';
like PushJobs::Stack::slurp("$dir/agent.log"),
    qr/reconnecting in \d+\.\d s/, 'the agent reconnected with a backoff';
unlike PushJobs::Stack::slurp("$dir/agent.log"), qr/client key/,
    'without its key file, signing with the key it loaded at start';
rename "$key.away", $key or die "rename $key.away: $!";

my $events = $stack->psql('pushjobs', "SELECT name, data FROM"
    . " pushjobs.job_events WHERE job_id = '$id' AND name = 'run_complete'");
my @done = grep { /"node"\s*:\s*"$node"/ } split /\n/, $events;
is scalar @done, 1, 'one run_complete event for the node' or diag $events;
like $done[0] // '', qr/success/, 'and it is a success';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';
$stack->stop;
done_testing;
