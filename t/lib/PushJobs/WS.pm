package PushJobs::WS;

# A minimal websocket client for protocol tests: it speaks to the module's
# agent channel byte by byte, so tests can send what a real agent never
# would (fragments, pipelined frames, unmasked or oversized frames).

use strict;
use warnings;

use Carp qw(croak);
use Digest::SHA qw(sha1_base64);
use IO::Select;
use IO::Socket::SSL;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time);

# connect(stack, node, extra => bytes sent right after the request,
#         headers => {...}); returns (ws, status, response head)
sub connect {
    my ($class, $stack, $node, %a) = @_;
    my $org = $stack->org;
    my $path = $a{path} // "/organizations/$org/pushy/agent";

    my $sock = IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $stack->port,
        SSL_ca_file => $stack->dir . '/tls/server.crt',
        SSL_hostname => 'localhost', Timeout => 10,
    ) or croak "connect: $SSL_ERROR";

    my $key = encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
    my %h = (
        Host => '127.0.0.1:' . $stack->port,
        ($a{no_upgrade} ? () : (Upgrade => 'websocket',
                                Connection => 'Upgrade')),
        'Sec-WebSocket-Key' => $key,
        'Sec-WebSocket-Version' => 13,
        %{ $stack->sign(method => 'GET', path => $path, user => $node,
                        key_file => $stack->user_key($node),
                        version => '1.3', api_version => '1') },
        'X-Ops-Server-API-Version' => 1,
        %{ $a{headers} // {} },
    );
    delete @h{ grep { !defined $h{$_} } keys %h };

    my $req = "GET $path HTTP/1.1\r\n"
              . join('', map { "$_: $h{$_}\r\n" } sort keys %h) . "\r\n";
    print $sock $req . ($a{extra} // '');

    my $self = bless { sock => $sock, buf => '' }, $class;
    my $head = $self->read_until("\r\n\r\n", 10) // croak 'no response';
    my ($status) = $head =~ m{^HTTP/1\.1 (\d+)};

    if ($status == 101) {
        my ($accept) = $head =~ /^Sec-WebSocket-Accept:\s*(\S+)/mi;
        my $want = sha1_base64($key . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
                   . '=';
        croak "bad Sec-WebSocket-Accept $accept" unless $accept eq $want;
    }

    return ($self, $status, $head);
}

sub fill {
    my ($self, $timeout) = @_;
    my $sock = $self->{sock};
    my $deadline = time + $timeout;
    while (1) {
        if (!$sock->pending) {
            my $left = $deadline - time;
            return 0 if $left <= 0;
            return 0 unless IO::Select->new($sock)->can_read($left);
        }
        my $n = sysread($sock, my $chunk, 65536);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EWOULDBLOCK} || $SSL_ERROR == SSL_WANT_READ;
            return -1;
        }
        return -1 if $n == 0;
        $self->{buf} .= $chunk;
        return 1;
    }
}

sub read_until {
    my ($self, $sep, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        my $i = index $self->{buf}, $sep;
        return substr($self->{buf}, 0, $i + length $sep, '') if $i >= 0;
        return undef if $self->fill($deadline - time) <= 0;
    }
}

# A frame as bytes: frame(opcode, payload, fin => 1, mask => 1, len => n)
sub frame {
    my ($opcode, $payload, %a) = @_;
    utf8::encode($payload) if utf8::is_utf8($payload);
    my $fin = $a{fin} // 1;
    my $mask = $a{mask} // 1;
    my $len = $a{len} // length $payload;
    my $b = chr(($fin ? 0x80 : 0) | $opcode);
    my $m = $mask ? 0x80 : 0;
    if ($len < 126) {
        $b .= chr($m | $len);
    } elsif ($len < 65536) {
        $b .= chr($m | 126) . pack('n', $len);
    } else {
        $b .= chr($m | 127) . pack('Q>', $len);
    }
    if ($mask) {
        my $k = join '', map { chr int rand 256 } 1 .. 4;
        my $masked = $payload ^ substr($k x (int(length($payload) / 4) + 1),
                                       0, length $payload);
        $b .= $k . $masked;
    } else {
        $b .= $payload;
    }
    return $b;
}

sub send_raw {
    my ($self, $bytes) = @_;
    local $SIG{PIPE} = 'IGNORE';
    print { $self->{sock} } $bytes;
}

sub send_text {
    my ($self, $text) = @_;
    $self->send_raw(frame(1, $text));
}

# Next frame from the server: (opcode, payload), or () on timeout or EOF.
sub read_frame {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (1) {
        my $buf = $self->{buf};
        if (length $buf >= 2) {
            my ($b0, $b1) = unpack 'CC', $buf;
            my $len = $b1 & 0x7f;
            my $off = 2;
            if ($len == 126) {
                $len = length $buf >= 4 ? unpack('n', substr $buf, 2, 2) : -1;
                $off = 4;
            } elsif ($len == 127) {
                $len = length $buf >= 10 ? unpack('Q>', substr $buf, 2, 8) : -1;
                $off = 10;
            }
            croak 'server frame is masked' if $b1 & 0x80;
            if ($len >= 0 && length $buf >= $off + $len) {
                substr($self->{buf}, 0, $off + $len, '');
                return ($b0 & 0x0f, substr($buf, $off, $len), $b0 & 0x80);
            }
        }
        return () if $self->fill($deadline - time) <= 0;
    }
}

# Next text message, skipping pings (answered) and pongs.
sub read_text {
    my ($self, $timeout) = @_;
    while (my ($op, $payload) = $self->read_frame($timeout)) {
        return $payload if $op == 1;
        return undef if $op == 8;
        $self->send_raw(frame(10, $payload)) if $op == 9;
    }
    return undef;
}

# Waits for the server's close frame; returns its code, or undef.
sub read_close {
    my ($self, $timeout) = @_;
    while (my ($op, $payload) = $self->read_frame($timeout)) {
        return length $payload >= 2 ? unpack('n', $payload) : 1005 if $op == 8;
    }
    return undef;
}

sub close {
    my ($self) = @_;
    $self->{sock}->close(SSL_fast_shutdown => 1) if $self->{sock};
    delete $self->{sock};
}

1;
