# The Chef server's principal answers kept in PostgreSQL (issue 15: a
# restart storm must not become a Chef API storm): a front end whose key
# cache is empty (nginx restarted) authenticates agents and users from
# what any front end stored, with the Chef API down; a stored key that
# no longer verifies (the key was rotated in Chef) is asked of the Chef
# server again, and the store updated; a key past the cache's ttl (within
# the stale time) stands in when the worker has asked the Chef server for
# keys at its rate already (a restart storm of agents connected for longer
# than the ttl), and else is not used.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

# rate=1r/m: a worker earns its first Chef key request a minute after it
# starts, so that every stale key below stands in
my $stack = PushJobs::Stack->new(agents => 2, workers => 2,
    key_zone => 'ttl=300s rate=1r/m',
    nginx_extra => 'pushjobs_chef_timeout 2s;');
$stack->start;

my $org = $stack->org;
my $base = "/organizations/$org/pushy";

sub stored {
    my ($name) = @_;
    my $out = $stack->psql('pushjobs',
        "SELECT status, length(body) > 0 FROM pushjobs.principals"
        . " WHERE org = '$org' AND name = '$name'");
    chomp $out;
    return $out;
}

# nginx restarted (its key cache empty): true once both agents are back
sub restart_both_back {
    $stack->stop_nginx('fe1');
    $stack->start_nginx('fe1');
    return PushJobs::Stack::wait_for(30, sub {
        metric('pushjobs_agents_connected{transport="websocket"}') == 2 },
        0.2);
}

sub metric {
    my ($name) = @_;
    my $res = $stack->http->get($stack->url . '/pushy/_metrics');
    my ($v) = $res->{content} =~ /^\Q$name\E (\d+)$/m;
    return $v // -1;
}

is $stack->request('GET', "$base/node_states")->{status}, 200,
    'alice reads node states';
is stored('alice'), "200\tt", 'the Chef server\'s answer for alice is kept';
is stored('node1'), "200\tt", '  and for the agents\' clients';

# a restart empties the cache; the Chef API is down: the agents (whose
# channel needs only their key) come back
$stack->chef_fault('down');
ok restart_both_back(),
    'nginx restarted, the Chef API down: both agents reconnected';
cmp_ok metric('pushjobs_key_store_hits_total'), '>=', 2,
    '  their keys from PostgreSQL (pushjobs_key_store_hits_total)';
is metric('pushjobs_chef_requests_total{result="ok"}'), 0,
    '  none from the Chef server';
# a user's request also needs her groups, which only the Chef server has
is $stack->request('GET', "$base/node_states")->{status}, 502,
    '  alice: her key from PostgreSQL, her groups not to be had: 502';

# a user nobody has asked for: the Chef server is needed
is $stack->request('GET', "$base/node_states", user => 'bob')->{status},
    502, 'bob, never stored, with the Chef API down: 502';
$stack->chef_fault('ok');

# alice's key rotated in Chef: the stored key does not verify, the Chef
# server is asked again, the store follows
$stack->psql('pushjobs',
    "UPDATE pushjobs.principals SET body = (SELECT body FROM"
    . " pushjobs.principals WHERE org = '$org' AND name = 'node2')"
    . " WHERE org = '$org' AND name = 'alice'");
$stack->stop_nginx('fe1');
$stack->start_nginx('fe1');
ok $stack->wait_online([ $stack->agent_names ], 30),
    'the Chef API back, restarted again';
is $stack->request('GET', "$base/node_states")->{status}, 200,
    'alice, whose stored key is another\'s: asked of the Chef server, 200';
ok PushJobs::Stack::wait_for(10, sub {
    $stack->psql('pushjobs', "SELECT body FROM pushjobs.principals"
                 . " WHERE org = '$org' AND name = 'alice'")
    ne $stack->psql('pushjobs', "SELECT body FROM pushjobs.principals"
                    . " WHERE org = '$org' AND name = 'node2'");
}, 0.1), '  the store has her key again';

# the agents connected longer ago than the ttl (their stored keys are
# stale), nginx restarted, the Chef API up: the workers, at their rate,
# let the stale keys stand in; the Chef server is not asked
$stack->psql('pushjobs', "UPDATE pushjobs.principals"
             . " SET fetched_at = now() - interval '400 seconds'");
ok restart_both_back(),
    'stored keys 100 s past their ttl, nginx restarted: both agents back';
cmp_ok metric('pushjobs_key_store_stale_total'), '>=', 2,
    '  with their stale keys (pushjobs_key_store_stale_total)';
is metric('pushjobs_chef_requests_total{result="ok"}'), 0,
    '  no Chef API request';
is $stack->psql('pushjobs', "SELECT count(*) FILTER (WHERE fetched_at"
                . " > now() - interval '300 seconds') FROM pushjobs.principals"),
    "0\n", '  the store is not made younger by it';

# a stale key that does not verify (rotated in Chef): the Chef server is
# asked whatever the rate, and the store follows
$stack->psql('pushjobs',
    "UPDATE pushjobs.principals SET body = (SELECT body FROM"
    . " pushjobs.principals WHERE org = '$org' AND name = 'node2')"
    . " WHERE org = '$org' AND name = 'alice'");
is $stack->request('GET', "$base/node_states")->{status}, 200,
    'alice, whose stale stored key is another\'s: asked of Chef, 200';
ok PushJobs::Stack::wait_for(10, sub {
    $stack->psql('pushjobs', "SELECT fetched_at > now() - interval '60 s'"
                 . " FROM pushjobs.principals"
                 . " WHERE org = '$org' AND name = 'alice'") =~ /^t/ }, 0.1),
    '  the store has her key again, fresh';

# past the time to live a stored answer is not used
$stack->psql('pushjobs', "UPDATE pushjobs.principals"
             . " SET fetched_at = now() - interval '1 day'");
$stack->chef_fault('down');
$stack->stop_nginx('fe1');
$stack->start_nginx('fe1');
is $stack->request('GET', "$base/node_states")->{status}, 502,
    'stored answers older than the ttl and the stale time, the Chef API'
    . ' down: 502';
$stack->chef_fault('ok');

$stack->stop;
done_testing;
