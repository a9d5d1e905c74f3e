package PushJobs::SSE;

# A streaming Server-Sent Events reader for the feed tests: it opens a TLS
# connection to a front end, sends one signed GET, and then reads the
# response as it comes: the head, the chunked transfer-encoding, and the
# SSE events and comments inside, each read with a bounded wait.

use strict;
use warnings;

use Carp qw(croak);
use IO::Select;
use IO::Socket::INET;
use IO::Socket::SSL;
use Socket qw(SOL_SOCKET SO_RCVBUF IPPROTO_TCP TCP_NODELAY inet_aton
              sockaddr_in);
use JSON::PP;
use Time::HiRes qw(time);

my $JSON = JSON::PP->new->allow_nonref;

# tls_socket(stack, rcvbuf): a TLS connection to the stack's first front
# end with a receive buffer of RCVBUF bytes, set before connecting so that
# the TCP window follows it (a reader that stops reading fills it at once;
# pass it to open() as sock).
sub tls_socket {
    my ($stack, $rcvbuf) = @_;

    my $sock = IO::Socket::INET->new(Proto => 'tcp')
        or croak "socket: $!";
    setsockopt($sock, SOL_SOCKET, SO_RCVBUF, $rcvbuf)
        or croak "SO_RCVBUF: $!";
    setsockopt($sock, IPPROTO_TCP, TCP_NODELAY, 1);
    connect($sock, sockaddr_in($stack->port, inet_aton('127.0.0.1')))
        or croak "connect: $!";
    IO::Socket::SSL->start_SSL($sock,
        SSL_ca_file => $stack->dir . '/tls/server.crt',
        SSL_hostname => 'localhost', Timeout => 10)
        or croak "TLS: $SSL_ERROR";

    return $sock;
}

# open(stack, path, user => 'alice', fe => 'fe1', last_event_id => 'job-3',
#      accept => 'text/event-stream' (undef: no Accept header),
#      headers => {...}, method => 'GET', sock => a TLS socket to use,
#      raw => 1: leave each event's data undecoded (no ->{json}),
#      unsigned => 1: no Chef signature headers)
# Returns the reader once the response head is in; ->status, ->header(NAME).
sub open {
    my ($class, $stack, $path, %a) = @_;
    my $fe = $a{fe} // 'fe1';
    my $method = $a{method} // 'GET';

    my $sock = $a{sock} // IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $stack->port($fe),
        SSL_ca_file => $stack->dir . '/tls/server.crt',
        SSL_hostname => 'localhost', Timeout => 10,
    ) or croak "connect: $SSL_ERROR";

    my %h = (
        Host => '127.0.0.1:' . $stack->port($fe),
        (exists $a{accept} ? (Accept => $a{accept})
                           : (Accept => 'text/event-stream')),
        %{ $a{unsigned} ? {}
           : $stack->sign(method => $method, path => $path,
                          user => $a{user} // 'alice',
                          version => $a{version} // '1.1',
                          api_version => '2') },
        'X-Ops-Server-API-Version' => 2,
        (defined $a{last_event_id}
            ? ('Last-Event-ID' => $a{last_event_id}) : ()),
        %{ $a{headers} // {} },
    );
    delete @h{ grep { !defined $h{$_} } keys %h };

    my $req = "$method $path HTTP/1.1\r\n"
              . join('', map { "$_: $h{$_}\r\n" } sort keys %h) . "\r\n";
    print $sock $req;

    my $self = bless {
        sock => $sock, raw => '', body => '', text => '', eof => 0,
        events => [], comments => [], no_json => $a{raw},
    }, $class;

    my $deadline = time + ($a{timeout} // 10);
    while ($self->{raw} !~ /\r\n\r\n/) {
        $self->fill($deadline - time) > 0 or croak "no response head";
    }

    my $end = index($self->{raw}, "\r\n\r\n");
    my $head = substr($self->{raw}, 0, $end);
    $self->{raw} = substr($self->{raw}, $end + 4);
    $self->{head} = $head;

    my ($status_line, @lines) = split /\r\n/, $head;
    ($self->{status}) = $status_line =~ m{^HTTP/1\.[01] (\d+)}
        or croak "bad status line: $status_line";
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        push @{ $self->{headers}{ lc $k } }, $v;
    }

    $self->{chunked} =
        (($self->header('transfer-encoding') // '') =~ /chunked/i);
    $self->{length} = $self->header('content-length');

    return $self;
}

sub status { $_[0]{status} }
sub head { $_[0]{head} }
sub header { my $v = $_[0]{headers}{ lc $_[1] }; $v ? $v->[0] : undef }
sub chunked { $_[0]{chunked} }
sub eof { $_[0]{eof} }
sub comments { @{ $_[0]{comments} } }

# Reads what the socket has within $timeout seconds: 1 when bytes came,
# 0 on timeout, -1 on end of stream.
sub fill {
    my ($self, $timeout) = @_;
    my $sock = $self->{sock};
    return -1 unless $sock;
    my $deadline = time + ($timeout > 0 ? $timeout : 0);
    while (1) {
        if (!$sock->pending) {
            my $left = $deadline - time;
            return 0 if $left <= 0;
            return 0 unless IO::Select->new($sock)->can_read($left);
        }
        my $n = sysread($sock, my $buf, 65536);
        if (!defined $n) {
            next if $!{EAGAIN} || $!{EWOULDBLOCK}
                    || $SSL_ERROR == SSL_WANT_READ;
            return -1;
        }
        return -1 if $n == 0;
        $self->{raw} .= $buf;
        return 1;
    }
}

# Moves complete chunks of the raw bytes into the body; notes the last
# chunk.  Without chunked encoding the body is the raw bytes.
sub dechunk {
    my ($self) = @_;

    if (!$self->{chunked}) {
        $self->{body} .= $self->{raw};
        $self->{raw} = '';
        if (defined $self->{length}
            && length $self->{body} >= $self->{length})
        {
            $self->{done} = 1;
        }
        return;
    }

    while (!$self->{done}) {
        my $crlf = index($self->{raw}, "\r\n");
        return if $crlf < 0;
        my $line = substr($self->{raw}, 0, $crlf);
        croak "bad chunk size line '$line'" unless $line =~ /^([0-9a-fA-F]+)/;
        my $size = hex $1;
        if ($size == 0) {
            # last chunk, no trailers expected
            return if length $self->{raw} < $crlf + 4;
            croak 'bad last chunk'
                unless substr($self->{raw}, $crlf + 2, 2) eq "\r\n";
            $self->{raw} = substr($self->{raw}, $crlf + 4);
            $self->{done} = 1;
            return;
        }
        return if length $self->{raw} < $crlf + 2 + $size + 2;
        $self->{body} .= substr($self->{raw}, $crlf + 2, $size);
        croak 'chunk not followed by CRLF'
            unless substr($self->{raw}, $crlf + 2 + $size, 2) eq "\r\n";
        $self->{raw} = substr($self->{raw}, $crlf + 2 + $size + 2);
        push @{ $self->{chunks} }, $size;
    }
}

# Splits the body into events (blank-line separated) and comment lines.
sub parse {
    my ($self) = @_;
    $self->dechunk;
    $self->{text} .= $self->{body};
    $self->{body} = '';

    while (1) {
        if ($self->{text} =~ s/\A(:[^\n]*)\n//) {
            push @{ $self->{comments} }, $1;
            next;
        }
        my $end = index($self->{text}, "\n\n");
        last if $end < 0;
        my $block = substr($self->{text}, 0, $end);
        $self->{text} = substr($self->{text}, $end + 2);
        my %ev;
        for my $line (split /\n/, $block) {
            if ($line =~ /^:/) {
                push @{ $self->{comments} }, $line;
                next;
            }
            my ($k, $v) = $line =~ /^([^:]+): ?(.*)$/ or next;
            if ($k eq 'data') {
                $ev{data} = defined $ev{data} ? "$ev{data}\n$v" : $v;
            } else {
                $ev{$k} = $v;
            }
        }
        $ev{raw} = $block;
        $ev{json} = eval { $JSON->decode($ev{data}) }
            if defined $ev{data} && !$self->{no_json};
        push @{ $self->{events} }, \%ev;
    }
}

# next_event(TIMEOUT): the next event, or undef when none came within
# TIMEOUT seconds or the stream ended.
sub next_event {
    my ($self, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    while (1) {
        $self->parse;
        return shift @{ $self->{events} } if @{ $self->{events} };
        return undef if $self->{done} || $self->{eof};
        my $r = $self->fill($deadline - time);
        if ($r < 0) {
            $self->{eof} = 1;
            $self->parse;
            return shift @{ $self->{events} } if @{ $self->{events} };
            return undef;
        }
        return undef if $r == 0;
    }
}

# events(N, TIMEOUT): up to N events within TIMEOUT seconds in all.
sub events {
    my ($self, $n, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    my @ev;
    while (@ev < $n) {
        my $ev = $self->next_event($deadline - time) or last;
        push @ev, $ev;
    }
    return @ev;
}

# until_event(NAME, TIMEOUT): every event up to and including the first
# named NAME.
sub until_event {
    my ($self, $name, $timeout) = @_;
    my $deadline = time + ($timeout // 10);
    my @ev;
    while (1) {
        my $ev = $self->next_event($deadline - time) or last;
        push @ev, $ev;
        last if ($ev->{event} // '') eq $name;
    }
    return @ev;
}

# wait_comment(TIMEOUT): true once a comment line came.
sub wait_comment {
    my ($self, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        $self->parse;
        return 1 if @{ $self->{comments} };
        return 0 if $self->{done} || $self->{eof};
        my $r = $self->fill($deadline - time);
        return 0 if $r == 0;
        if ($r < 0) {
            $self->{eof} = 1;
        }
    }
}

# wait_end(TIMEOUT): true when the response ended (last chunk, or the
# server closed the connection) within TIMEOUT seconds.
sub wait_end {
    my ($self, $timeout) = @_;
    my $deadline = time + $timeout;
    while (1) {
        $self->parse;
        return 1 if $self->{done} || $self->{eof};
        my $r = $self->fill($deadline - time);
        return 0 if $r == 0;
        $self->{eof} = 1 if $r < 0;
    }
}

# closed(TIMEOUT): true when the server closed the connection.
sub closed {
    my ($self, $timeout) = @_;
    my $deadline = time + $timeout;
    while (!$self->{eof}) {
        my $r = $self->fill($deadline - time);
        return 0 if $r == 0;
        $self->{eof} = 1 if $r < 0;
    }
    $self->parse;
    return 1;
}

# done: the last chunk was read
sub done { $_[0]{done} }

# Unparsed body text left (a partial event).
sub rest { $_[0]{text} }

sub close {
    my ($self) = @_;
    if (my $s = delete $self->{sock}) {
        $s->close(SSL_no_shutdown => 1);
    }
}

sub DESTROY { $_[0]->close }

1;
