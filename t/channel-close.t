# An agent channel that is closed while it is being accepted: frames that
# close it (a close frame, a binary frame, an unmasked frame) sent in the
# same write as the upgrade request, or a reset right behind the request
# (the welcome's write fails), by a client whose key is cached, so that the
# whole request runs in one event, from the request's own handler.
# The channel used to free the request under that handler (a use-after-free
# that ASan reports).  Each attempt must get its 101 and its close code, the
# workers must survive, and real agents keep working.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::SSL;
use Socket qw(SOL_SOCKET SO_LINGER);
use Test::More;
use PushJobs::Stack;
use PushJobs::WS;

my $stack = PushJobs::Stack->new(agents => 1, workers => 2);
$stack->start;

my ($node) = $stack->agent_names;
my $master = $stack->{procs}{'nginx:fe1'};

sub workers {
    my @pids = sort { $a <=> $b } map { /(\d+)/ ? $1 : () }
               `ps -o pid= --ppid $master`;
    return "@pids";
}

my $pids = workers();
like $pids, qr/^\d+ \d+$/, 'two workers';

# a first channel caches ghost's key in the shared key cache
my ($ws, $status) = PushJobs::WS->connect($stack, 'ghost');
is $status, 101, 'ghost connects once: its key is cached';
$ws->close;

my @cases = (
    [ 'a close frame', PushJobs::WS::frame(8, pack('n', 1000)), 1000 ],
    [ 'a binary frame', PushJobs::WS::frame(2, 'bytes'), 1003 ],
    [ 'an unmasked frame', PushJobs::WS::frame(1, '{}', mask => 0), 1002 ],
);

# several times each, so that both workers take some
for my $c (@cases) {
    my ($what, $bytes, $code) = @$c;
    my (@st, @codes);
    for (1 .. 4) {
        my ($w, $s) = PushJobs::WS->connect($stack, 'ghost', extra => $bytes);
        push @st, $s;
        push @codes, $s == 101 ? $w->read_close(5) // 'none' : 'none';
        $w->close;
    }
    is_deeply \@st, [ (101) x 4 ], "upgrade with $what behind it: 101";
    is_deeply \@codes, [ ($code) x 4 ], "  then closed with $code";
    is workers(), $pids, '  the workers survived';
}

# a signed upgrade, then at once a reset (SO_LINGER 0): the 101 and the
# welcome are written to a connection that is gone
my $path = '/organizations/' . $stack->org . '/pushy/agent';
for (1 .. 30) {
    my $sock = IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $stack->port,
        SSL_ca_file => $stack->dir . '/tls/server.crt',
        SSL_hostname => 'localhost', Timeout => 10,
    ) or die "connect: $SSL_ERROR";
    my %h = (Host => '127.0.0.1:' . $stack->port, Upgrade => 'websocket',
             Connection => 'Upgrade',
             'Sec-WebSocket-Key' => 'dGhlIHNhbXBsZSBub25jZQ==',
             'Sec-WebSocket-Version' => 13, 'X-Ops-Server-API-Version' => 1,
             %{ $stack->sign(method => 'GET', path => $path, user => 'ghost',
                             key_file => $stack->user_key('ghost'),
                             version => '1.3', api_version => '1') });
    print $sock "GET $path HTTP/1.1\r\n"
                . join('', map { "$_: $h{$_}\r\n" } sort keys %h) . "\r\n";
    setsockopt($sock, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
    CORE::close($sock);
}
($ws, $status) = PushJobs::WS->connect($stack, 'ghost');
is $status, 101, 'after 30 upgrades reset at once, a channel opens';
$ws->close;
is workers(), $pids, '  the workers survived';

my $id = $stack->start_job({ command => 'true', nodes => [$node] });
is $stack->wait_job($id, 30)->{status}, 'complete', 'a real agent still runs jobs';

is workers(), $pids, 'the same workers as at the start';
unlike $stack->error_log
       . PushJobs::Stack::slurp($stack->dir . '/fe1/stdout.log'),
    qr/exited on signal|AddressSanitizer|runtime error/,
    'no worker died, no sanitizer report';
is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
