# The agent channel's long-poll fallback (docs/protocol.md §6): an agent
# forced into long-poll runs jobs end to end, alone and next to a websocket
# agent; an agent whose websocket upgrade is refused falls back by itself;
# a scripted poll client checks the edges: refused requests, sessions that
# are replaced, unknown, closed, or that stop polling.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use IO::Socket::SSL;
use Test::More;
use Time::HiRes qw(time);
use PushJobs::Stack;

my $json = PushJobs::Stack::json();

my $stack = PushJobs::Stack->new(
    agents => 3,
    nginx_extra => "pushjobs_max_message_size 64k;\n"
                   . "    pushjobs_ping_interval 1s;\n",
);
$stack->make_keys;
$stack->start_postgres;
$stack->start_chef;
$stack->start_nginx('fe1');

my $org = $stack->org;
my $poll = "/organizations/$org/pushy/agent/poll";
my ($lp, $ws, $fb) = $stack->agent_names;

sub agent_log { PushJobs::Stack::slurp($stack->agent_log($_[0])) }

sub node_status {
    my ($node) = @_;
    my $res = $stack->request('GET', "/organizations/$org/pushy/node_states/$node");
    return $res->{json} ? $res->{json}{status} : '';
}

sub output { $stack->node_output(@_) }

# --- a real agent, forced into long-poll ----------------------------------

$stack->start_agent($lp, args => ['--long-poll']);
$stack->start_agent($ws);
ok $stack->wait_online([$lp, $ws], 30), 'long-poll and websocket agents online'
    or diag agent_log($lp);
like agent_log($lp), qr/channel open \(long-poll\)/, 'the agent long-polls';
like agent_log($lp), qr/welcome from fe1/, '  and was welcomed';

my $id = $stack->start_job({ command => 'echo hello from afar',
                             nodes => [$lp],
                             capture_output => JSON::PP::true });
my $job = $stack->wait_job($id, 30);
is $job->{status}, 'complete', 'long-poll job complete';
is_deeply $job->{nodes}, { succeeded => [$lp] }, '  node succeeded';
is output($id, $lp), "hello from afar\n", '  output captured';
ok PushJobs::Stack::wait_for(10, sub {
    !-e $stack->agent_dir($lp) . "/spool/$id.json" }),
    '  the report left the spool on the server\'s ack';

# a job on both transports at once
$id = $stack->start_job({ command => 'sleep 1', nodes => [$lp, $ws] });
$job = $stack->wait_job($id, 30);
is $job->{status}, 'complete', 'mixed job complete';
is_deeply $job->{nodes}, { succeeded => [sort $lp, $ws] },
    '  both nodes succeeded';

# --- fallback: a front end that refuses the websocket upgrade --------------

$stack->start_nginx('fe2', server_extra => <<'EOF');
        location ~ ^/organizations/[^/]+/pushy/agent$ {
            if ($http_upgrade) {
                return 426 "no websockets through here\n";
            }
            pushjobs;
        }
EOF
$stack->start_agent($fb, fe => 'fe2');
ok $stack->wait_online([$fb], 30), 'agent behind fe2 online'
    or diag agent_log($fb);
like agent_log($fb), qr/upgrade was refused \(426\), falling back to long-poll/,
    '  after its upgrade was refused, by long-poll';
$id = $stack->start_job({ command => 'echo fell back', nodes => [$fb],
                          capture_output => JSON::PP::true });
$job = $stack->wait_job($id, 30);
is_deeply $job->{nodes}, { succeeded => [$fb] }, '  a job runs on it';
is output($id, $fb), "fell back\n", '  with its output';

# --- a scripted poll client -------------------------------------------------

# poll(node, body, sid => ..., user => ...): a signed POST, answered
sub poll {
    my ($node, $body, %a) = @_;
    return $stack->request('POST', $poll, body => $body,
        user => $a{user} // $node,
        key_file => $stack->user_key($a{user} // $node),
        version => '1.3',
        headers => { 'X-Pushjobs-Session' => $a{sid}, %{ $a{headers} // {} } },
        ($a{unsigned} ? (unsigned => 1) : ()));
}

# polls on a keep-alive socket of our own (one worker), answered later
sub poll_socket {
    my $sock = IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $stack->port,
        SSL_ca_file => $stack->dir . '/tls/server.crt',
        SSL_hostname => 'localhost', Timeout => 10,
    ) or die "connect: $SSL_ERROR";
    return $sock;
}

sub poll_async {
    my ($sock, $node, $body, $sid) = @_;
    my %h = (
        Host => '127.0.0.1:' . $stack->port,
        'Content-Type' => 'application/json',
        'Content-Length' => length $body,
        'X-Pushjobs-Session' => $sid,
        %{ $stack->sign(method => 'POST', path => $poll, body => $body,
                        user => $node, key_file => $stack->user_key($node),
                        version => '1.3', api_version => '1') },
        'X-Ops-Server-API-Version' => 1,
    );
    delete @h{ grep { !defined $h{$_} } keys %h };
    print $sock "POST $poll HTTP/1.1\r\n"
        . join('', map { "$_: $h{$_}\r\n" } sort keys %h) . "\r\n" . $body;
}

sub read_answer {
    my ($sock, $timeout) = @_;
    my $buf = '';
    my $deadline = time + $timeout;
    while (1) {
        if ($buf =~ /\r\n\r\n/) {
            my ($head, $rest) = split /\r\n\r\n/, $buf, 2;
            my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
            my ($sid) = $head =~ /^X-Pushjobs-Session:\s*(\S+)/mi;
            if (defined $len && length $rest >= $len) {
                my $answer = $json->decode(substr $rest, 0, $len);
                return wantarray ? ($answer, $sid) : $answer;
            }
        }
        if (!$sock->pending) {
            my $left = $deadline - time;
            return undef if $left <= 0;
            next unless IO::Select->new($sock)->can_read($left);
        }
        my $n = sysread($sock, my $chunk, 65536);
        next if !defined $n && $SSL_ERROR == SSL_WANT_READ;
        return undef unless $n;
        $buf .= $chunk;
    }
}

my $hello = '[{"type":"hello","v":1,"agent":"longpoll.t","jobs":[]}]';

# refusals, with the REST API's codes
is poll('ghost', 'not json')->{status}, 400, 'a body that is not JSON: 400';
is poll('ghost', '{"type":"hello"}')->{status}, 400,
    'a body that is not an array: 400';
is poll('ghost', '[1]')->{status}, 400, 'an array of non-objects: 400';
like poll('ghost', $hello, unsigned => 1)->{status}, qr/^40[01]$/,
    'unsigned: 400 or 401';
is poll('ghost', $hello, user => 'alice')->{status}, 403,
    'a user cannot poll as an agent';
is poll('ghost', '[' . ('{"type":"x"},' x 6000) . '{}]')->{status}, 413,
    'a body over pushjobs_max_message_size: 413';
is $stack->request('GET', $poll, user => 'ghost',
                   key_file => $stack->user_key('ghost'))->{status}, 405,
    'GET: 405';

# a session: welcome, and its id
my $res = poll('ghost', $hello);
is $res->{status}, 200, 'first poll: 200';
my $sid = $res->{headers}{'x-pushjobs-session'};
ok $sid, '  with a session id';
is $res->{json}[0]{type}, 'welcome', '  and the welcome';
is $res->{json}[0]{node}, 'ghost', '  naming the node';
is $res->{json}[0]{poll_timeout}, 25, '  and the poll timeout';
ok PushJobs::Stack::wait_for(10, sub { node_status('ghost') eq 'online' }),
    'ghost online';

# a poll with nothing to say is held; a newer session replaces the old one
my $sock = poll_socket();
poll_async($sock, 'ghost', $hello);
my ($welcome, $sid1) = read_answer($sock, 10);
is $welcome->[0]{type}, 'welcome', 'a session on a socket of its own';
poll_async($sock, 'ghost', '[]', $sid1);
ok !IO::Select->new($sock)->can_read(1.5), 'an empty poll is held';
my $res2 = poll('ghost', $hello);
my $sid2 = $res2->{headers}{'x-pushjobs-session'};
ok $sid2 && $sid2 ne $sid, 'a new session of the node';
is_deeply scalar read_answer($sock, 10), [ { type => 'close', v => 1, code => 4000 } ],
    'the held poll of the older session: close 4000';
close $sock;

# an unknown session
$res = poll('ghost', '[]', sid => $sid);
is_deeply $res->{json}, [ { type => 'close', v => 1, code => 4001 } ],
    'a poll of a replaced session: close 4001';
$res = poll('ghost', '[]', sid => 'no-such-session');
is_deeply $res->{json}, [ { type => 'close', v => 1, code => 4001 } ],
    'a made-up session: close 4001';

# the agent closes its session
$res = poll('ghost', '[{"type":"close","v":1,"code":1000}]', sid => $sid2);
is_deeply $res->{json}, [ { type => 'close', v => 1, code => 1000 } ],
    'the agent\'s close is answered with close 1000';
ok PushJobs::Stack::wait_for(10, sub { node_status('ghost') eq 'offline' }),
    'ghost offline after its close';

# a session that stops polling goes offline (ping interval 1 s: 2 to 3 s)
$res = poll('ghost', $hello);
my $sid3 = $res->{headers}{'x-pushjobs-session'};
ok PushJobs::Stack::wait_for(10, sub { node_status('ghost') eq 'online' }),
    'ghost online again';
my $t0 = time;
ok PushJobs::Stack::wait_for(15, sub { node_status('ghost') eq 'offline' }),
    'a session not polled goes offline';
cmp_ok time - $t0, '<', 10, '  within a few ping intervals';
like $stack->error_log('fe1'), qr/agent "ghost" of "$org" stopped polling/,
    '  as logged';
is_deeply poll('ghost', '[]', sid => $sid3)->{json},
    [ { type => 'close', v => 1, code => 4001 } ], '  and its session is gone';

# a reload ends the held polls of the old workers: the agent opens a new
# session with a new worker at once
my $opens = () = agent_log($lp) =~ /channel open \(long-poll\)/g;
kill 'HUP', $stack->{procs}{'nginx:fe1'};
ok PushJobs::Stack::wait_for(20, sub {
    my $n = () = agent_log($lp) =~ /welcome from fe1/g;
    $n > $opens;
}), 'after a reload the long-poll agent has a new session';

# the long-poll agent still works after all that, and stops cleanly
$id = $stack->start_job({ command => 'true', nodes => [$lp] });
is_deeply $stack->wait_job($id, 30)->{nodes}, { succeeded => [$lp] },
    'long-poll agent still runs jobs';
$stack->stop_agent($lp);
ok PushJobs::Stack::wait_for(10, sub { node_status($lp) eq 'offline' }),
    'a stopped long-poll agent goes offline';
like agent_log($lp), qr/the server closed the session \(1000\)/,
    '  after closing its session';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
