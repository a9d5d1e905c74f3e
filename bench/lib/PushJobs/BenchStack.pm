package PushJobs::BenchStack;

# The local stack of t/lib/PushJobs/Stack.pm, for benchmarks: the Chef API
# stand-in's fixture also holds SIM simulated clients PREFIX1..PREFIXn that
# share ONE RSA key (bench/keys: sim.pem), nginx gets the file descriptor
# and key-cache limits for many connections, and load agents
# (pushjobs-loadagent) are started, driven and read through pipes.
# Stack.pm itself is not changed.

use strict;
use warnings;

use PushJobs::Stack;
use JSON::PP ();
use parent -norequire, 'PushJobs::Stack';

use Carp qw(croak);
use IPC::Open2 qw(open2);
use POSIX qw(ceil);
use File::Path ();
use Time::HiRes qw(time sleep clock_gettime CLOCK_MONOTONIC);

our $LOADAGENT = $ENV{PUSHJOBS_LOADAGENT}
                 || "$PushJobs::Stack::ROOT/build/pushjobs-loadagent";

sub new {
    my ($class, %opt) = @_;
    my $sim = delete $opt{sim} // 0;
    my $share = delete $opt{share_node_keys} // 1;
    my $spool = delete $opt{spool_base};
    my $self = PushJobs::Stack::new($class, %opt);
    $self->{sim} = $sim;
    $self->{spool_base} = $spool;
    $self->{sim_prefix} = 'sim';
    $self->{share_node_keys} = $share;
    $self->{loaders} = [];
    return $self;
}

# spool_base => DIR: real agents spool their final reports under DIR/NAME
# (a tmpfs, for the comparison run: see Compare.pm) instead of the stack's
# directory on disk.
sub start_agent {
    my ($self, $name, %opt) = @_;
    if ($self->{spool_base}) {
        my $d = "$self->{spool_base}/$name";
        File::Path::make_path($d, { mode => 0700 });
        $opt{args} = [ '--spool', $d, @{ $opt{args} // [] } ];
    }
    return $self->SUPER::start_agent($name, %opt);
}

sub stop {
    my ($self) = @_;
    return if $self->{stopped} || $self->{owner} != $$;
    $self->stop_loaders;
    $self->SUPER::stop;
    File::Path::remove_tree($self->{spool_base}) if $self->{spool_base};
}

sub sim_names {
    my ($self) = @_;
    return map { "$self->{sim_prefix}$_" } 1 .. $self->{sim};
}

# Real agents (node1..) share one key too unless share_node_keys => 0:
# 2048-bit keys take ~50 ms each to generate.
sub genkey {
    my ($self, $name) = @_;
    if ($self->{share_node_keys} && $name =~ /^node\d+$/) {
        return @{ $self->{node_key} //= [ $self->SUPER::genkey('nodes') ] };
    }
    return $self->SUPER::genkey($name);
}

sub make_keys {
    my ($self) = @_;
    $self->SUPER::make_keys;
    @{ $self->{sim_key} }{qw(key pub)} = $self->SUPER::genkey('sim');
}

sub fixture {
    my ($self) = @_;
    my $f = $self->SUPER::fixture;
    my $org = $f->{organizations}{ $self->{org} };
    my $pub = $self->{sim_key}{pub};
    for my $n ($self->sim_names) {
        $org->{clients}{$n} = { public_key => $pub,
                                validator => JSON::PP::false };
    }
    push @{ $org->{groups}{clients}{clients} }, $self->sim_names;
    return $f;
}

sub nginx_conf {
    my ($self, $fe) = @_;
    my $conf = $self->SUPER::nginx_conf($fe);
    # ulimit -n is 20000 on the bench machine and cannot be raised there
    $conf =~ s/worker_rlimit_nofile \d+;/worker_rlimit_nofile 20000;/;
    $conf =~ s/worker_connections \d+;/worker_connections 19500;/;
    # TLS 1.3 (nginx 1.22 leaves it out by default): its session tickets
    # are renewed over a live channel (see omnibus/README.md,
    # session_tickets), TLS 1.2's end ssl_session_timeout after the
    # handshake
    $conf =~ s/(        ssl_session_ticket_key [^\n]*\n)/$1        ssl_protocols TLSv1.2 TLSv1.3;\n/;
    # one cached principal per simulated client (~0.5 KB each)
    my $mb = 4 + ceil($self->{sim} / 1000);
    $conf =~ s/pushjobs_key_zone pushjobs_keys:\d+m/pushjobs_key_zone pushjobs_keys:${mb}m/;
    # a job naming every simulated node: ~12 bytes a name (default 1 MB)
    if ($self->{sim} > 50000) {
        my $body = 1 + ceil($self->{sim} * 16 / 2**20);
        $conf =~ s/(    pushjobs_server_name)/    pushjobs_max_body_size ${body}m;\n$1/;
    }
    return $conf;
}

# --- nginx processes and memory -------------------------------------------

sub nginx_master { $_[0]{procs}{'nginx:' . ($_[1] // 'fe1')} }

sub nginx_workers {
    my ($self, $fe) = @_;
    my $m = $self->nginx_master($fe) or return ();
    my @w;
    for my $st (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $st or next;
        my $l = <$fh> // next;
        my ($pid, $ppid) = $l =~ /^(\d+) \(.*\) \S+ (\d+)/ or next;
        push @w, $pid if $ppid == $m;
    }
    return @w;
}

sub proc_status {
    my ($pid, $field) = @_;
    my $s = PushJobs::Stack::slurp("/proc/$pid/status");
    return $s =~ /^$field:\s+(\d+)/m ? $1 * 1024 : 0;
}

sub proc_cpu {        # utime + stime, seconds (and the reaped children's)
    my ($pid, $children) = @_;
    my $s = PushJobs::Stack::slurp("/proc/$pid/stat");
    $s =~ s/^.*\) //s;
    my @f = split ' ', $s;
    return 0 if @f < 15;          # gone meanwhile (a backend that ended)
    return ($f[11] + $f[12] + ($children ? $f[13] + $f[14] : 0))
           / POSIX::sysconf(POSIX::_SC_CLK_TCK());
}

sub postgres_pids {
    my ($self) = @_;
    my $pidf = "$self->{dir}/pg/data/postmaster.pid";
    my ($pm) = PushJobs::Stack::slurp($pidf) =~ /^(\d+)/ or return ();
    my @p = ($pm);
    for my $st (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $st or next;
        my $l = <$fh> // next;
        my ($pid, $ppid) = $l =~ /^(\d+) \(.*\) \S+ (\d+)/ or next;
        push @p, $pid if $ppid == $pm;
    }
    return @p;
}

# PostgreSQL's CPU: its processes', and that of the backends that ended
# (the postmaster's reaped children), so that a delta never goes back.
sub pg_cpu {
    my ($self) = @_;
    my ($pm, @rest) = $self->postgres_pids or return 0;
    my $c = proc_cpu($pm, 1);
    $c += proc_cpu($_) for @rest;
    return $c;
}

# A snapshot: nginx workers' RSS and CPU, postgres CPU, kernel memory.
sub snapshot {
    my ($self) = @_;
    my %s = (t => clock_gettime(CLOCK_MONOTONIC));
    for my $w ($self->nginx_workers) {
        $s{rss} += proc_status($w, 'VmRSS');
        $s{cpu} += proc_cpu($w);
        $s{workers}++;
    }
    $s{pgcpu} = $self->pg_cpu;
    $s{chefcpu} = $self->{procs}{chef} ? proc_cpu($self->{procs}{chef}) : 0;
    $s{lacpu} += proc_cpu($_->{pid}) for @{ $self->{loaders} };
    # the whole machine: busy and all CPU time of every core, seconds
    my ($cpu) = PushJobs::Stack::slurp('/proc/stat') =~ /^cpu\s+(.*)$/m;
    my @j = split ' ', $cpu // '';
    my $hz = POSIX::sysconf(POSIX::_SC_CLK_TCK());
    $s{all} = 0;
    $s{all} += $_ for @j[0 .. 7];
    $s{busy} = ($s{all} - ($j[3] // 0) - ($j[4] // 0)) / $hz;
    $s{all} /= $hz;
    my $mi = PushJobs::Stack::slurp('/proc/meminfo');
    $s{slab} = $mi =~ /^Slab:\s+(\d+)/m ? $1 * 1024 : 0;
    my $ss = PushJobs::Stack::slurp('/proc/net/sockstat');
    ($s{tcp_inuse}, $s{tcp_tw}, $s{tcp_mem}) =
        $ss =~ /^TCP: inuse (\d+) orphan \d+ tw (\d+) alloc \d+ mem (\d+)/m;
    $s{tcp_mem} = ($s{tcp_mem} // 0) * 4096;
    return \%s;
}

# --- load agents ----------------------------------------------------------

# start_loaders(PROCS): PROCS load agent processes sharing the simulated
# clients; each uses its own loopback source addresses (one per 1000).
# frontends => [fe1, fe2, ...]: each process spreads its clients over
# those front ends (client N on the (N mod K)th), and a closed channel
# comes back through another one.
sub start_loaders {
    my ($self, $procs, %o) = @_;
    my $n = $self->{sim};
    croak "build the load agent first (make bench): $LOADAGENT"
        unless -x $LOADAGENT;
    my $per = ceil($n / $procs);
    my $src = 0;
    for my $p (0 .. $procs - 1) {
        my $first = 1 + $p * $per;
        my $count = $n - ($first - 1) < $per ? $n - ($first - 1) : $per;
        last if $count <= 0;
        my $nsrc = ceil($count / 1000);
        my $ports = join ',', map { $self->port($_) }
                              @{ $o{frontends} // ['fe1'] };
        my @cmd = ($LOADAGENT, '--port', $ports, '--org', $self->{org},
                   '--key', $self->{sim_key}{key}, '--ca',
                   "$self->{dir}/tls/server.crt", '--prefix',
                   $self->{sim_prefix}, '--first', $first, '--count', $count,
                   '--src-first', $src, '--src-count', $nsrc,
                   '--inflight', $o{inflight} // 256,
                   '--backoff', $o{backoff} // 1,
                   ($o{resume} // 1) ? () : ('--no-resume'));
        $src += $nsrc;
        open my $err, '>>', "$self->{dir}/loadagent.log" or croak $!;
        my ($out, $in);
        my $pid = do {
            local *STDERR_SAVE;
            open STDERR_SAVE, '>&', \*STDERR;
            open STDERR, '>&', $err;
            my $pid = open2($out, $in, @cmd);
            open STDERR, '>&', \*STDERR_SAVE;
            $pid;
        };
        my $l = <$out> // croak "load agent died: "
                              . PushJobs::Stack::slurp("$self->{dir}/loadagent.log");
        push @{ $self->{loaders} }, { pid => $pid, out => $out, in => $in,
                                      count => $count };
    }
}

sub loader_cmd {
    my ($self, $cmd, $until) = @_;
    for my $l (@{ $self->{loaders} }) {
        print { $l->{in} } "$cmd\n";
        $l->{in}->flush;
    }
    my @res;
    for my $l (@{ $self->{loaders} }) {
        my @lines;
        while (defined(my $line = readline $l->{out})) {
            chomp $line;
            push @lines, $line;
            last unless $until && $line !~ $until;
        }
        push @res, \@lines;
    }
    return @res;
}

# Sum of every load agent's stats.
sub loader_stats {
    my ($self) = @_;
    my %sum;
    for my $r ($self->loader_cmd('stats')) {
        my %s = $r->[0] =~ /(\w+)=(-?\d+)/g;
        for (keys %s) {
            if ($_ eq 't' || $_ eq 'last_welcome') {
                $sum{$_} = $s{$_} if ($sum{$_} // 0) < $s{$_};
            } else {
                $sum{$_} += $s{$_};
            }
        }
    }
    return \%sum;
}

# Commit arrival times (CLOCK_MONOTONIC seconds) of a job, all agents.
sub commit_times {
    my ($self, $job) = @_;
    my @t;
    for my $r ($self->loader_cmd("times $job")) {
        my (undef, undef, $n, @us) = split ' ', $r->[0];
        push @t, map { $_ / 1e6 } @us;
    }
    return sort { $a <=> $b } @t;
}

sub wait_welcomed {
    my ($self, $want, $timeout, $tick) = @_;
    my $s;
    my $ok = PushJobs::Stack::wait_for($timeout, sub {
        $s = $self->loader_stats;
        $tick->($s) if $tick;
        $s->{welcomed} >= $want;
    }, 0.1);
    return $ok ? $s : undef;
}

sub stop_loaders {
    my ($self) = @_;
    for my $l (splice @{ $self->{loaders} }) {
        print { $l->{in} } "quit\n";
        close $l->{in};
        waitpid $l->{pid}, 0;
    }
}

sub DESTROY { $_[0]->stop }

1;
