# The agent channel's websocket layer, spoken byte by byte: the upgrade and
# its refusals, fragmented messages with interleaved control frames, bytes
# pipelined behind the upgrade request, the message size cap, unmasked
# frames, replacement of an older channel, an empty fragmented message.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;
use PushJobs::WS;

my $json = PushJobs::Stack::json();

my $stack = PushJobs::Stack->new(agents => 0,
                                 nginx_extra => 'pushjobs_max_message_size 4k;');
$stack->start;

my $org = $stack->org;
my $hello = '{"type":"hello","v":1,"agent":"ws.t","jobs":[]}';

# without the upgrade headers
my ($ws, $status, $head) = PushJobs::WS->connect($stack, 'ghost',
                                                 no_upgrade => 1);
is $status, 426, 'no upgrade headers: 426';
$ws->close;

# a user is not an agent
($ws, $status) = PushJobs::WS->connect($stack, 'alice');
is $status, 403, 'a user cannot open an agent channel';
$ws->close;

# wrong websocket version
($ws, $status, $head) = PushJobs::WS->connect($stack, 'ghost',
    headers => { 'Sec-WebSocket-Version' => 8 });
is $status, 426, 'websocket version 8: 426';
like $head, qr/^Sec-WebSocket-Version: 13/mi, '  naming version 13';
$ws->close;

# the hello pipelined behind the upgrade request, in the same write
($ws, $status) = PushJobs::WS->connect($stack, 'ghost',
    extra => PushJobs::WS::frame(1, $hello));
is $status, 101, 'upgrade: 101';
my $welcome = $json->decode($ws->read_text(10) // '{}');
is $welcome->{type}, 'welcome', 'welcome first';
is $welcome->{node}, 'ghost', 'welcome names the node';
ok PushJobs::Stack::wait_for(10, sub {
    my $res = $stack->request('GET', "/organizations/$org/pushy/node_states/ghost");
    $res->{json} && $res->{json}{status} eq 'online';
}), 'ghost is online';

# once upgraded, the channel gives its HTTP request back: the access log has
# the 101 while the channel is still open
ok PushJobs::Stack::wait_for(10, sub {
    grep { m{"GET /organizations/$org/pushy/agent HTTP/1.1" 101 } }
        split /\n/, PushJobs::Stack::slurp($stack->dir . '/fe1/access.log');
}), 'the upgrade is logged (101) while the channel is open';

# a fragmented message with a ping between its fragments, in one write;
# the server answers the ping with a pong carrying the same payload
my $msg = '{"type":"no_such_type","v":1,"pad":"' . ('x' x 300) . '"}';
$ws->send_raw(PushJobs::WS::frame(1, substr($msg, 0, 100), fin => 0)
              . PushJobs::WS::frame(9, 'are you there')
              . PushJobs::WS::frame(0, substr($msg, 100, 100), fin => 0)
              . PushJobs::WS::frame(0, substr($msg, 200), fin => 1));
my ($op, $payload);
do { ($op, $payload) = $ws->read_frame(10) } while (defined $op && $op == 9);
is $op, 10, 'pong between fragments';
is $payload, 'are you there', '  with the ping payload';

# the channel still works after it: a ping of ours is answered
$ws->send_raw(PushJobs::WS::frame(9, 'again'));
do { ($op, $payload) = $ws->read_frame(10) } while (defined $op && $op == 9);
is $payload, 'again', 'channel alive after a fragmented message';

# a second channel of the same node replaces the first (close code 4000)
my ($ws2, $status2) = PushJobs::WS->connect($stack, 'ghost',
    extra => PushJobs::WS::frame(1, $hello));
is $status2, 101, 'second channel of the same node';
is $ws->read_close(10), 4000, 'older channel closed with 4000';
$ws->close;

# a message over pushjobs_max_message_size (4k) closes with 1009, checked
# on the declared length, before the payload arrives
$ws2->send_raw(substr(PushJobs::WS::frame(1, 'x' x 100, len => 1_000_000),
                      0, 14));
is $ws2->read_close(10), 1009, 'oversized message: 1009';
$ws2->close;

# ... and so does one that grows too big over continuation frames
($ws, $status) = PushJobs::WS->connect($stack, 'ghost');
is $status, 101, 'reconnect';
$ws->send_raw(PushJobs::WS::frame(1, 'y' x 3000, fin => 0)
              . PushJobs::WS::frame(0, 'y' x 3000, fin => 0));
is $ws->read_close(10), 1009, 'oversized fragmented message: 1009';
$ws->close;

# an unmasked client frame is a protocol error
($ws, $status) = PushJobs::WS->connect($stack, 'ghost');
$ws->send_raw(PushJobs::WS::frame(1, $hello, mask => 0));
is $ws->read_close(10), 1002, 'unmasked frame: 1002';
$ws->close;

# a binary frame is refused
($ws, $status) = PushJobs::WS->connect($stack, 'ghost');
$ws->send_raw(PushJobs::WS::frame(2, "\x00\x01"));
is $ws->read_close(10), 1003, 'binary frame: 1003';
$ws->close;

# an empty text message made of empty fragments (FIN clear, then an empty
# continuation: the reader had no buffer, and checked UTF-8 over a NULL
# pointer, issue 16): it is not a JSON object, 1007, and the worker lives
($ws, $status) = PushJobs::WS->connect($stack, 'ghost',
    extra => PushJobs::WS::frame(1, $hello));
is $status, 101, 'reconnect for empty fragments';
$welcome = $json->decode($ws->read_text(10) // '{}');
is $welcome->{type}, 'welcome', '  welcomed';
$ws->send_raw(pack('H*', '018000000000' . '808000000000'));
is $ws->read_close(10), 1007, 'empty message from empty fragments: 1007';
$ws->close;

# the worker that read it still serves: a new channel is welcomed at once
($ws, $status) = PushJobs::WS->connect($stack, 'ghost',
    extra => PushJobs::WS::frame(1, $hello));
is $status, 101, 'channel after the empty fragments';
$welcome = $json->decode($ws->read_text(10) // '{}');
is $welcome->{type}, 'welcome', '  welcomed';
$ws->close;

# the node goes offline once its channel is gone
ok PushJobs::Stack::wait_for(15, sub {
    my $res = $stack->request('GET', "/organizations/$org/pushy/node_states/ghost");
    $res->{json} && $res->{json}{status} eq 'offline';
}), 'ghost offline after its channels closed';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
