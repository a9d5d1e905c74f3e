package PushJobs::Browser;

# Headless Chromium driven over its DevTools protocol (a websocket on
# 127.0.0.1), for the job page tests: navigate, evaluate JavaScript, wait
# for a condition (bounded), take a screenshot. Debian's chromium package;
# nothing else.

use strict;
use warnings;

use Carp qw(croak);
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::IP;
use JSON::PP;
use MIME::Base64 qw(encode_base64 decode_base64);
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

my $JSON = JSON::PP->new->utf8->canonical;

sub chromium {
    for my $c ($ENV{PUSHJOBS_CHROMIUM}, 'chromium', 'chromium-browser') {
        next unless defined $c;
        return $c if $c =~ m{/} && -x $c;
        for my $d (split /:/, $ENV{PATH}) {
            return "$d/$c" if -x "$d/$c";
        }
    }
    return undef;
}

# new(width => 1280, height => 900)
sub new {
    my ($class, %o) = @_;
    my $bin = chromium()
        // croak 'chromium not found: install Debian\'s chromium package '
                 . '(stack/install-deps does)';
    my $dir = tempdir('pushjobs-chromium-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    my @args = ('--headless=new', '--remote-debugging-port=0',
                "--user-data-dir=$dir", '--ignore-certificate-errors',
                '--disable-gpu', '--disable-dev-shm-usage',
                '--no-first-run', '--no-default-browser-check',
                '--disable-extensions', '--disable-background-networking',
                '--hide-scrollbars', '--mute-audio',
                '--window-size=' . ($o{width} // 1280) . ','
                . ($o{height} // 900),
                ($> == 0 ? '--no-sandbox' : ()), 'about:blank');
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>', "$dir/chromium.log";
        open STDERR, '>&', \*STDOUT;
        setpgrp 0, 0;
        exec $bin, @args or POSIX::_exit(127);
    }
    my $self = bless { pid => $pid, dir => $dir, id => 0, events => [],
                       buf => '' }, $class;

    my $deadline = time + 30;
    my $port;
    while (time < $deadline) {
        if (open my $fh, '<', "$dir/DevToolsActivePort") {
            my $l = <$fh>;
            $port = $1 if defined $l && $l =~ /^(\d+)$/;
            last if $port;
        }
        croak "chromium exited: " . $self->log
            if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    croak 'chromium did not open its DevTools port: ' . $self->log
        unless $port;
    $self->{port} = $port;

    # a page target of our own
    my $t = $self->http_json('PUT', '/json/new?about:blank');
    $self->{target} = $t->{id};
    $self->ws_connect($t->{webSocketDebuggerUrl});
    $self->cmd('Page.enable');
    $self->cmd('Runtime.enable');
    $self->cmd('Log.enable');
    return $self;
}

sub log {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/chromium.log" or return '';
    local $/;
    my $l = <$fh> // '';
    return substr $l, -2000;
}

sub http_json {
    my ($self, $method, $path) = @_;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1',
                                PeerPort => $self->{port}, Timeout => 10)
        or croak "DevTools: $!";
    print $s "$method $path HTTP/1.1\r\nHost: 127.0.0.1:$self->{port}\r\n"
             . "Content-Length: 0\r\nConnection: close\r\n\r\n";
    # Chromium keeps the connection open: read Content-Length bytes
    my ($r, $deadline) = ('', time + 10);
    while (time < $deadline) {
        last if $r =~ /\r\n\r\n/
                && $r =~ /^Content-Length:\s*(\d+)/mi
                && length($r) >= index($r, "\r\n\r\n") + 4 + $1;
        last unless IO::Select->new($s)->can_read($deadline - time);
        sysread($s, $r, 65536, length $r) or last;
    }
    close $s;
    my ($body) = $r =~ /\r\n\r\n(.*)\z/s;
    croak "DevTools $path: $r" unless $r =~ m{^HTTP/1\.1 200} && $body;
    return $body =~ /^\s*[\[{]/ ? $JSON->decode($body) : $body;
}

sub ws_connect {
    my ($self, $url) = @_;
    my ($hp, $path) = $url =~ m{^ws://([^/]+)(/.*)$}
        or croak "bad websocket url $url";
    my $s = IO::Socket::IP->new(PeerAddr => $hp, Timeout => 10)
        or croak "DevTools websocket: $!";
    my $key = encode_base64(join('', map { chr int rand 256 } 1 .. 16), '');
    print $s "GET $path HTTP/1.1\r\nHost: $hp\r\nUpgrade: websocket\r\n"
             . "Connection: Upgrade\r\nSec-WebSocket-Key: $key\r\n"
             . "Sec-WebSocket-Version: 13\r\n\r\n";
    $self->{sock} = $s;
    my $head = '';
    my $deadline = time + 10;
    until ($self->{buf} =~ /\r\n\r\n/) {
        $self->fill($deadline) or croak 'DevTools websocket: no answer';
    }
    ($head, $self->{buf}) = split /\r\n\r\n/, $self->{buf}, 2;
    croak "DevTools websocket: $head" unless $head =~ m{^HTTP/1\.1 101};
}

sub fill {
    my ($self, $deadline) = @_;
    my $left = $deadline - time;
    return 0 if $left <= 0;
    return 0 unless IO::Select->new($self->{sock})->can_read($left);
    my $n = sysread $self->{sock}, my $chunk, 1 << 20;
    croak 'DevTools websocket closed' . ($n ? '' : ': ' . $self->log)
        unless $n;
    $self->{buf} .= $chunk;
    return 1;
}

sub send_msg {
    my ($self, $text) = @_;
    my $len = length $text;
    my $h = chr(0x81);
    if ($len < 126) {
        $h .= chr(0x80 | $len);
    } elsif ($len < 65536) {
        $h .= chr(0x80 | 126) . pack('n', $len);
    } else {
        $h .= chr(0x80 | 127) . pack('Q>', $len);
    }
    my $k = join '', map { chr int rand 256 } 1 .. 4;
    my $masked = $text ^ substr($k x (int($len / 4) + 1), 0, $len);
    my $out = $h . $k . $masked;
    while (length $out) {
        my $n = syswrite $self->{sock}, $out;
        croak "DevTools websocket write: $!" unless defined $n;
        substr($out, 0, $n, '');
    }
}

# one whole message (text), or undef at the deadline
sub recv_msg {
    my ($self, $deadline) = @_;
    my $msg = '';
    while (1) {
        my $b = $self->{buf};
        if (length $b >= 2) {
            my ($b0, $b1) = unpack 'CC', $b;
            my $len = $b1 & 0x7f;
            my $off = 2;
            if ($len == 126) {
                $len = length $b >= 4 ? unpack('n', substr $b, 2, 2) : undef;
                $off = 4;
            } elsif ($len == 127) {
                $len = length $b >= 10 ? unpack('Q>', substr $b, 2, 8)
                                       : undef;
                $off = 10;
            }
            if (defined $len && length $b >= $off + $len) {
                my $payload = substr $b, $off, $len;
                substr($self->{buf}, 0, $off + $len, '');
                my $op = $b0 & 0x0f;
                if ($op == 8) {
                    croak 'DevTools websocket closed by chromium';
                }
                if ($op == 9) {                         # ping: pong
                    next;
                }
                $msg .= $payload if $op == 1 || $op == 0 || $op == 2;
                return $msg if $b0 & 0x80;
                next;
            }
        }
        return undef unless $self->fill($deadline);
    }
}

# cmd(method, {params}, timeout) -> result; a protocol error croaks
sub cmd {
    my ($self, $method, $params, $timeout) = @_;
    my $id = ++$self->{id};
    $self->send_msg($JSON->encode({ id => $id, method => $method,
                                    params => $params // {} }));
    my $deadline = time + ($timeout // 30);
    while (1) {
        my $m = $self->recv_msg($deadline)
            // croak "DevTools $method: no answer in time";
        my $d = $JSON->decode($m);
        if (!defined $d->{id}) {
            push @{ $self->{events} }, $d;
            shift @{ $self->{events} } while @{ $self->{events} } > 2000;
            next;
        }
        next unless $d->{id} == $id;
        croak "DevTools $method: $d->{error}{message}" if $d->{error};
        return $d->{result};
    }
}

sub events { @{ $_[0]{events} } }

# What went wrong in the pages so far: uncaught exceptions and CSP
# violations, as strings.
sub page_errors {
    my ($self) = @_;
    my @e;
    for my $ev ($self->events) {
        if ($ev->{method} eq 'Runtime.exceptionThrown') {
            my $d = $ev->{params}{exceptionDetails};
            push @e, 'exception: '
                     . ($d->{exception}{description} // $d->{text});
        } elsif ($ev->{method} eq 'Log.entryAdded'
                 && ($ev->{params}{entry}{text} // '')
                    =~ /Content.Security.Policy/i)
        {
            push @e, 'CSP: ' . $ev->{params}{entry}{text};
        }
    }
    return @e;
}

# the JavaScript expression's value (promises awaited); an exception croaks
sub eval {
    my ($self, $js) = @_;
    my $r = $self->cmd('Runtime.evaluate', {
        expression => $js, returnByValue => JSON::PP::true,
        awaitPromise => JSON::PP::true,
    });
    croak "JavaScript: "
          . ($r->{exceptionDetails}{exception}{description}
             // $r->{exceptionDetails}{text}) . "\n  in: $js"
        if $r->{exceptionDetails};
    return $r->{result}{value};
}

# wait_until(js, timeout): true once the expression is truthy, false at the
# bound (checked every 50 ms)
sub wait_until {
    my ($self, $js, $timeout) = @_;
    my $deadline = time + ($timeout // 15);
    while (1) {
        my $v = eval { $self->eval($js) };
        return $v if $v;
        return 0 if time >= $deadline;
        sleep 0.05;
    }
}

# navigate(url): loads the page (its document complete)
sub navigate {
    my ($self, $url) = @_;
    my $r = $self->cmd('Page.navigate', { url => $url });
    croak "navigate $url: $r->{errorText}" if $r->{errorText};
    $self->wait_until('document.readyState === "complete"', 20)
        or croak "navigate $url: not loaded";
    return $r;
}

sub viewport {
    my ($self, $w, $h) = @_;
    $self->cmd('Emulation.setDeviceMetricsOverride', {
        width => $w, height => $h, deviceScaleFactor => 1,
        mobile => JSON::PP::false });
}

# screenshot(file, full => 1): a PNG of the page
sub screenshot {
    my ($self, $file, %o) = @_;
    my $r = $self->cmd('Page.captureScreenshot', {
        format => 'png', captureBeyondViewport => $o{full} ? JSON::PP::true
                                                           : JSON::PP::false,
    }, 60);
    open my $fh, '>:raw', $file or croak "$file: $!";
    print $fh decode_base64($r->{data});
    close $fh or croak "$file: $!";
}

sub close {
    my ($self) = @_;
    return unless $self->{pid};
    eval { $self->http_json('PUT', '/json/close/' . $self->{target}) }
        if $self->{target};
    eval { $self->cmd('Browser.close', {}, 5) } if $self->{sock};
    close $self->{sock} if $self->{sock};
    my $deadline = time + 5;
    while (time < $deadline) {
        last if waitpid($self->{pid}, WNOHANG) == $self->{pid};
        sleep 0.05;
    }
    if (kill 0, $self->{pid}) {
        kill 'KILL', -$self->{pid};
        waitpid $self->{pid}, 0;
    } else {
        kill 'KILL', -$self->{pid};         # its helper processes
    }
    delete $self->{pid};
}

sub DESTROY { $_[0]->close }

1;
