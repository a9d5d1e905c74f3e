# One job end to end: REST API, PostgreSQL, NOTIFY, agent channels on both
# nginx workers, real agent processes.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 3, workers => 2);
$stack->start;

my $org = $stack->org;
my @nodes = $stack->agent_names;

# Which worker holds each agent's channel, from nginx's error log.
sub workers_of_agents {
    my %w;
    for my $line (split /\n/, $stack->error_log) {
        $w{$2} = $1 if $line =~ /\] (\d+)#\d+: .*agent "([^"]+)" of "\Q$org\E" connected/;
    }
    return \%w;
}

# reuseport spreads connections by their address: reconnect agents (bounded)
# until both workers hold at least one channel.
my $spread = PushJobs::Stack::wait_for(60, sub {
    my $w = workers_of_agents();
    my %pids = map { $w->{$_} => 1 } grep { $w->{$_} } @nodes;
    return 1 if keys %pids >= 2;
    $stack->stop_agent($nodes[-1]);
    $stack->start_agent($nodes[-1]);
    $stack->wait_online([$nodes[-1]], 20);
    return 0;
}, 0.1);
ok $spread, 'agents are spread over both nginx workers';

my $id = $stack->start_job({ command => 'chef-client', nodes => \@nodes });
like $id, qr/^[0-9a-f]{32}$/, 'job created';

my $job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', 'job on 3 agents ends complete';
is_deeply $job->{nodes}, { succeeded => [ sort @nodes ] },
    'all 3 nodes succeeded' or diag explain $job;
is $job->{command}, 'chef-client', 'command kept';

# output capture and the output endpoint
$id = $stack->start_job({ command => 'echo hi there', nodes => [ $nodes[0] ],
                          capture_output => JSON::PP::true });
$job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', 'echo job complete';
my $res = $stack->request('GET',
    "/organizations/$org/pushy/jobs/$id/output/$nodes[0]/stdout",
    headers => { Accept => 'application/octet-stream' });
is $res->{status}, 200, 'stdout served';
is $res->{content}, "hi there\n", 'stdout is what the command printed';

# a failing command
$id = $stack->start_job({ command => 'false', nodes => [ @nodes[0, 1] ] });
$job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', 'a job whose command fails is still complete';
is_deeply $job->{nodes}, { failed => [ sort @nodes[0, 1] ] }, 'nodes failed';

# a command outside the whitelist: refused on the node
$id = $stack->start_job({ command => 'rm -rf /', nodes => [ $nodes[0] ] });
$job = $stack->wait_job($id, 60);
is $job->{status}, 'quorum_failed', 'non-whitelisted command: quorum_failed';
is_deeply $job->{nodes}, { nacked => [ $nodes[0] ] }, 'node nacked';

# an unknown node and a known client without an agent
$id = $stack->start_job({ command => 'chef-client',
                          nodes => [ 'no-such-node', 'ghost' ] });
$job = $stack->wait_job($id, 30);
is $job->{status}, 'quorum_failed', 'unknown nodes: quorum_failed';
is_deeply $job->{nodes}, { unavailable => [ 'ghost', 'no-such-node' ] },
    'nodes unavailable';

# quorum reached although one node is unavailable
$id = $stack->start_job({ command => 'true', quorum => 2,
                          nodes => [ @nodes[0, 1], 'ghost' ] });
$job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', 'quorum 2 of 3 reached';
is_deeply $job->{nodes}, { succeeded => [ sort @nodes[0, 1] ],
                           unavailable => ['ghost'] }, 'per-node result';

# the job list and node states
$res = $stack->request('GET', "/organizations/$org/pushy/jobs");
is $res->{status}, 200, 'job list';
is scalar @{ $res->{json} }, 6, 'six jobs listed';

$res = $stack->request('GET', "/organizations/$org/pushy/node_states/$nodes[0]");
is_deeply $res->{json}, { node_name => $nodes[0], status => 'online',
                          availability => 'available' }, 'node state online';
$res = $stack->request('GET', "/organizations/$org/pushy/node_states/ghost");
is $res->{json}{status}, 'offline', 'ghost offline';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
