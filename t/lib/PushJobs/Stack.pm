package PushJobs::Stack;

# The local pushjobs stack, used by the demo (stack/pushjobs-stack) and by
# every test: a private PostgreSQL cluster with the schema deployed by
# sqitch, the test stand-in for the Chef server API (stack/chef-api-standin.rb,
# signature checks by Chef's own mixlib-authentication), Debian's nginx with
# ngx_pushjobs_module loaded (TLS, reuseport, >= 2 workers) in front of it,
# and N pushjobs-agent processes, each a Chef client of the org with its own
# key and client.rb.  Everything listens on loopback and lives in one
# temporary directory, removed on stop unless PUSHJOBS_KEEP is set.

use strict;
use warnings;

use Carp qw(croak);
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Path qw(make_path remove_tree);
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::INET;
use IPC::Open2 qw(open2);
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Scalar::Util ();
use Socket ();
use Time::HiRes qw(time sleep);

our $ROOT = abs_path(dirname(__FILE__) . '/../../..');
our $PGBIN = $ENV{PGBIN} || (sort glob('/usr/lib/postgresql/*/bin'))[-1]
             || '/usr/lib/postgresql/15/bin';
# PUSHJOBS_NGINX (or NGINX): the nginx binary.  nginx itself reads NGINX as
# the list of listening sockets inherited on a binary upgrade, so it must
# not reach the nginx processes.
our $NGINX = $ENV{PUSHJOBS_NGINX} || $ENV{NGINX} || '/usr/sbin/nginx';
delete $ENV{NGINX};
# PUSHJOBS_MODULE=static: $NGINX has the module built in (make asan), so the
# configuration has no load_module line.
our $MODULE = $ENV{PUSHJOBS_MODULE}
              || "$ROOT/build/nginx/ngx_pushjobs_module.so";
# An nginx and the module it loads with load_module, for the tests of the
# dynamic module as it is packaged (t/addon.t, t/packages.t): with a static
# module, Debian's nginx and make all's module.
our $DYNAMIC_NGINX = $MODULE eq 'static' ? '/usr/sbin/nginx' : $NGINX;
our $DYNAMIC_MODULE = $MODULE eq 'static'
                      ? "$ROOT/build/nginx/ngx_pushjobs_module.so" : $MODULE;
our $AGENT = $ENV{PUSHJOBS_AGENT} || "$ROOT/build/pushjobs-agent";

my $JSON = JSON::PP->new->canonical->allow_nonref;

# the stacks not stopped yet (weak references)
my %LIVE;

sub json { $JSON }

sub new {
    my ($class, %opt) = @_;

    my $self = bless {
        org       => $opt{org} // 'demo',
        agents    => $opt{agents} // 3,
        deploy_to => $opt{deploy_to},
        pg_extra  => $opt{pg_extra},
        workers   => $opt{workers} // 2,
        whitelist => $opt{whitelist} // {
            'chef-client' => 'true',
            'true'        => 'true',
            'false'       => 'false',
            'hostname'    => 'hostname',
            'uptime'      => 'uptime',
        },
        whitelist_regex => $opt{whitelist_regex} // [
            [ '^echo (.*)$', 'echo \\1' ],
            [ '^sleep ([0-9]+)$', 'sleep \\1' ],
        ],
        nginx_extra => $opt{nginx_extra} // '',
        ui => $opt{ui},
        # the front ends' listener also speaks HTTP/2 (ALPN h2)
        http2     => $opt{http2} // 0,
        # the key cache's parameters, e.g. 'ttl=2s stale=10s'
        key_zone  => $opt{key_zone} // 'ttl=300s',
        tls_key   => $opt{tls_key},
        # appended to every agent's client.rb, e.g. 'allowed_users ["root"]'
        client_rb_extra => $opt{client_rb_extra} // '',
        verbose   => $opt{verbose} // $ENV{PUSHJOBS_VERBOSE},
        procs     => {},
        owner     => $$,
    }, $class;

    my $base = $ENV{PUSHJOBS_TMPDIR} || '/tmp';
    $self->{dir} = tempdir('pushjobs-stack-XXXXXX', DIR => $base);

    # nginx workers (nobody) and PostgreSQL (postgres) must reach it
    chmod 0755, $self->{dir};

    $self->sanitizer_setup;

    $LIVE{"$self"} = $self;
    Scalar::Util::weaken($LIVE{"$self"});

    return $self;
}

# A test that dies leaves its stack to this END block, which runs before
# Test::Builder's (loaded first): a sanitizer report still fails the test,
# and is printed.
END {
    local $?;
    $_->stop for grep { defined } values %LIVE;
}

sub dir { $_[0]{dir} }
sub org { $_[0]{org} }

# An agent's directory (its client.rb, keys, spool) and its log.
sub agent_dir { "$_[0]{dir}/agents/$_[1]" }
sub agent_log { $_[0]->agent_dir($_[1]) . '/agent.log' }

# Front ends are named fe1 (started by start), fe2, ...; each is an nginx
# with the module on its own port, sharing PostgreSQL and the Chef API.
sub port { $_[0]{fe}{ $_[1] // 'fe1' }{port} }
sub url { 'https://127.0.0.1:' . $_[0]->port($_[1]) }

sub log {
    my ($self, @msg) = @_;
    print STDERR "# stack: @msg\n" if $self->{verbose};
}

sub run_cmd {
    my ($self, @cmd) = @_;
    my $out = "$self->{dir}/cmd.log";
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', $out or die;
        open STDERR, '>&', \*STDOUT or die;
        exec @cmd or die "exec $cmd[0]: $!";
    }
    waitpid $pid, 0;
    if ($? != 0) {
        my $log = slurp($out);
        croak "failed ($?): @cmd\n$log";
    }
}

sub slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return '';
    local $/;
    my $s = <$fh>;
    return $s;
}

sub spew {
    my ($file, $content, $mode) = @_;
    open my $fh, '>', $file or croak "$file: $!";
    print $fh $content;
    close $fh or croak "$file: $!";
    chmod $mode, $file if defined $mode;
}

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1)
        or croak "no free port: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# Wait until $cond returns true, at most $timeout seconds; returns its value
# or undef on timeout.
sub wait_for {
    my ($timeout, $cond, $step) = @_;
    my $deadline = time + $timeout;
    $step //= 0.05;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        return undef if time > $deadline;
        sleep $step;
    }
}

sub spawn {
    my ($self, $name, $log, @cmd) = @_;
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        setpgrp(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log or die "$log: $!";
        open STDERR, '>&', \*STDOUT or die;
        exec @cmd or die "exec $cmd[0]: $!";
    }
    $self->{procs}{$name} = $pid;
    $self->log("started $name ($pid)");
    return $pid;
}

sub alive {
    my ($self, $name) = @_;
    my $pid = $self->{procs}{$name} or return 0;
    return waitpid($pid, WNOHANG) == 0;
}

sub stop_proc {
    my ($self, $name, $sig, $timeout) = @_;
    my $pid = delete $self->{procs}{$name} or return;
    kill $sig // 'TERM', $pid;
    my $gone = wait_for($timeout // 10, sub { waitpid($pid, WNOHANG) != 0 });
    if (!$gone) {
        kill 'KILL', -$pid;
        kill 'KILL', $pid;
        waitpid $pid, 0;
    }
}

# --- start ----------------------------------------------------------------

sub start {
    my ($self) = @_;

    croak "build the module first (make): $MODULE"
        unless $MODULE eq 'static' || -f $MODULE;
    croak "build the agent first (make): $AGENT" unless -x $AGENT;

    $self->make_keys;
    $self->start_postgres;
    $self->start_chef;
    $self->start_nginx;
    $self->start_agents;

    return $self;
}

sub genkey {
    my ($self, $name) = @_;
    my $dir = "$self->{dir}/keys";
    make_path($dir);
    my $key = "$dir/$name.pem";
    $self->run_cmd('openssl', 'genrsa', '-out', $key, '2048');
    $self->run_cmd('openssl', 'rsa', '-in', $key, '-pubout',
                   '-out', "$dir/$name.pub");
    chmod 0644, $key;
    return ($key, slurp("$dir/$name.pub"));
}

sub make_keys {
    my ($self) = @_;
    my $d = $self->{dir};

    make_path("$d/tls");
    # tls_key => 'ec': an ECDSA P-256 server certificate instead of RSA-2048
    my @newkey = ($self->{tls_key} // '') eq 'ec'
        ? ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1')
        : ('-newkey', 'rsa:2048');
    $self->run_cmd('openssl', 'req', '-x509', @newkey,
                   '-nodes', '-keyout', "$d/tls/server.key",
                   '-out', "$d/tls/server.crt", '-days', '2',
                   '-subj', '/CN=localhost',
                   '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost');
    # the session ticket key every front end shares, as the add-on's
    # (a restarted or another front end resumes the agents' sessions)
    $self->run_cmd('openssl', 'rand', '-out', "$d/tls/ticket.key", '80');

    for my $u (qw(pivotal alice bob carol dave)) {
        @{ $self->{users}{$u} }{qw(key pub)} = $self->genkey($u);
    }

    for my $i (1 .. $self->{agents}) {
        my $n = "node$i";
        @{ $self->{clients}{$n} }{qw(key pub)} = $self->genkey($n);
    }

    # a client that exists in Chef but runs no agent, and one of another org
    for my $n (qw(ghost othernode)) {
        @{ $self->{clients}{$n} }{qw(key pub)} = $self->genkey($n);
    }
}

sub user_key { $_[0]{users}{$_[1]}{key} // $_[0]{clients}{$_[1]}{key} }

sub fixture {
    my ($self) = @_;
    my $org = $self->{org};
    my @nodes = ((map { "node$_" } 1 .. $self->{agents}), 'ghost');

    my %users = map {
        $_ => { public_key => $self->{users}{$_}{pub},
                ($_ eq 'pivotal' ? (superuser => JSON::PP::true) : ()) }
    } keys %{ $self->{users} };

    my $client = sub {
        map { $_ => { public_key => $self->{clients}{$_}{pub},
                      validator => JSON::PP::false } } @_;
    };
    my %clients = $client->(@nodes);

    my %nodes = map {
        my $i = /(\d+)/ ? $1 : 0;
        $_ => {
            chef_environment => '_default',
            run_list => [ $i % 2 ? 'role[web]' : 'role[db]' ],
            automatic => { roles => [ $i % 2 ? 'web' : 'db' ],
                           platform => 'debian', hostname => $_ },
            normal => {},
        }
    } @nodes;

    # alice: admin; bob: a plain member; carol: not in the org; dave: admin
    # of the other org only
    return {
        users => \%users,
        organizations => {
            $org => {
                full_name => 'Push Jobs demo',
                users => [qw(alice bob)],
                clients => \%clients,
                groups => {
                    admins => { users => [qw(pivotal alice)],
                                clients => [], groups => [] },
                    users => { users => [qw(alice bob)],
                               clients => [], groups => [] },
                    clients => { users => [], clients => [@nodes],
                                 groups => [] },
                    billing_admins => { users => [], clients => [],
                                        groups => [] },
                },
                nodes => \%nodes,
            },
            other => {
                full_name => 'Another org',
                users => ['dave'],
                clients => { $client->('othernode') },
                groups => {
                    admins => { users => [qw(pivotal dave)],
                                clients => [], groups => [] },
                    users => { users => ['dave'], clients => [],
                               groups => [] },
                    clients => { users => [], clients => ['othernode'],
                                 groups => [] },
                },
                nodes => { othernode => { chef_environment => '_default',
                                          run_list => [], automatic => {},
                                          normal => {} } },
            },
        },
    };
}

sub start_postgres {
    my ($self) = @_;
    my $d = "$self->{dir}/pg";
    my @as = $> == 0 ? ('runuser', '-u', 'postgres', '--') : ();

    make_path($d);
    if ($> == 0) {
        my ($uid, $gid) = (getpwnam('postgres'))[2, 3];
        croak 'no postgres user: install postgresql' unless defined $uid;
        chown $uid, $gid, $d;
    }

    $self->{pg_port} = free_port();
    $self->run_cmd(@as, "$PGBIN/initdb", '-D', "$d/data", '-U', 'postgres',
                   '-A', 'trust', '-E', 'UTF8', '--locale=C.UTF-8',
                   '--no-sync');
    $self->{pg_opts} = "-k $d -h 127.0.0.1 -p $self->{pg_port} -c fsync=off "
                       . '-c synchronous_commit=off -c full_page_writes=off '
                       . '-c max_connections=200'
                       # e.g. pg_stat_statements for a profile (bench/run)
                       . ($self->{pg_extra} ? " $self->{pg_extra}" : '');
    $self->run_cmd(@as, "$PGBIN/pg_ctl", '-D', "$d/data", '-l', "$d/log",
                   '-w', '-o', $self->{pg_opts}, 'start');
    $self->{pg_as} = \@as;
    $self->{pg_up} = 1;

    $self->psql('postgres', 'CREATE ROLE pushjobs LOGIN');
    $self->psql('postgres', 'CREATE DATABASE pushjobs OWNER pushjobs');

    $self->sqitch('deploy', '--verify',
                  $self->{deploy_to} ? ('--to', $self->{deploy_to}) : ());

    $self->log("postgres on $self->{pg_port}");
}

# sqitch: run sqitch COMMAND ARGS on the plan in migrations/, against the
# stack's database (deploy_to => '@TAG' in new(): start_postgres deploys
# the plan up to there only).
sub sqitch {
    my ($self, $cmd, @args) = @_;
    local $ENV{HOME} = $self->{dir};
    local $ENV{SQITCH_CONFIG} = '/dev/null';
    local $ENV{SQITCH_USER_CONFIG} = '/dev/null';
    local $ENV{SQITCH_SYSTEM_CONFIG} = '/dev/null';
    my $cwd = Cwd::getcwd();
    chdir "$ROOT/migrations" or croak $!;
    eval {
        $self->run_cmd('sqitch', $cmd, '--target',
                       "db:pg://pushjobs\@127.0.0.1:$self->{pg_port}/pushjobs",
                       @args);
    };
    my $err = $@;
    chdir $cwd;
    croak $err if $err;
}

# pg_stop: stop PostgreSQL fast (pg_ctl -m fast: sessions are ended, the
# data directory and the port are kept), as an outage would; pg_start:
# start it again on the same port and return once it accepts connections.
sub pg_stop {
    my ($self) = @_;
    return unless $self->{pg_up};
    $self->run_cmd(@{ $self->{pg_as} }, "$PGBIN/pg_ctl", '-D',
                   "$self->{dir}/pg/data", '-m', 'fast', '-w', 'stop');
    $self->{pg_up} = 0;
    $self->log('postgres stopped');
}

sub pg_start {
    my ($self) = @_;
    return if $self->{pg_up};
    my $d = "$self->{dir}/pg";
    $self->run_cmd(@{ $self->{pg_as} }, "$PGBIN/pg_ctl", '-D', "$d/data",
                   '-l', "$d/log", '-w', '-o', $self->{pg_opts}, 'start');
    $self->{pg_up} = 1;
    wait_for(20, sub { eval { $self->psql('pushjobs', 'SELECT 1'); 1 } }, 0.1)
        or croak "postgres did not come back:\n" . slurp("$d/log");
    $self->log('postgres started again');
}

# Run SQL as $user against the pushjobs database; returns the output rows
# (unaligned, tab-separated).
sub psql {
    my ($self, $user, $sql, $db) = @_;
    $db //= $user eq 'postgres' ? 'postgres' : 'pushjobs';
    my @cmd = ('psql', '-X', '-q', '-A', '-t', '-F', "\t", '-v',
               'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', $self->{pg_port},
               '-U', $user, '-d', $db, '-c', $sql);
    my $pid = open(my $fh, '-|') // croak "fork: $!";
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd or die "exec psql: $!";
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    croak "psql failed: $sql\n$out" if $?;
    return $out;
}

# A transaction that holds what SQL takes (row or table locks) until
# release(): psql on a pipe, BEGIN, SQL, then an advisory lock of its own;
# returned once PostgreSQL shows that one granted, so SQL's are held.
sub hold {
    my ($self, $sql) = @_;
    my $key = 4242 + $self->{holds}++;
    my $pid = open(my $fh, '|-') // croak "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', '/dev/null';
        exec 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1',
             '-p', $self->{pg_port}, '-U', 'pushjobs', '-d', 'pushjobs'
            or die "exec psql: $!";
    }
    $fh->autoflush(1);
    print $fh "BEGIN;\n$sql\nSELECT pg_advisory_xact_lock($key);\n";
    wait_for(10, sub {
        $self->psql('pushjobs', 'SELECT count(*) FROM pg_locks WHERE '
                    . "locktype = 'advisory' AND objid = $key AND granted")
            == 1
    }, 0.1) or croak "hold: not taken: $sql";
    return $fh;
}

sub release { my ($self, $fh) = @_; print $fh "COMMIT;\n"; close $fh }

# The Chef API stand-in; started again (chef_fault('ok') after 'down') on
# the same port, from the fixture: what tests changed in it is lost.
sub start_chef {
    my ($self) = @_;
    my $d = "$self->{dir}/chef";
    make_path($d);

    spew("$d/fixture.json", JSON::PP->new->canonical->pretty->encode($self->fixture));

    $self->{chef_port} //= free_port();
    my $seen = -s "$d/stdout.log" // 0;
    $self->spawn('chef', "$d/stdout.log", 'ruby',
                 "$ROOT/stack/chef-api-standin.rb", '--listen', '127.0.0.1',
                 '--port', $self->{chef_port}, '--fixture', "$d/fixture.json",
                 '--log', "$d/access.log", '--fault', "$d/fault");

    wait_for(20, sub { substr(slurp("$d/stdout.log"), $seen) =~ /^ready /m })
        or croak "Chef API stand-in did not start:\n" . slurp("$d/stdout.log");

    $self->log("chef api stand-in on $self->{chef_port}");
}

# chef_fault(MODE): the Chef API as an outage leaves it.  'down': stopped,
# connections refused (its port kept); 'hang': requests accepted and never
# answered; 'error': every request answers 500; 'garbage': 200 with a body
# that is not JSON; 'notfound': 404 with a body that is not JSON; 'ok':
# normal again (started again if it was down).
sub chef_fault {
    my ($self, $mode) = @_;
    my $file = "$self->{dir}/chef/fault";
    croak "unknown Chef API fault '$mode'"
        unless $mode =~ /^(down|hang|error|garbage|notfound|ok)$/;

    # release hung requests first: the stand-in waits for them to stop
    spew($file, $mode eq 'down' ? "ok\n" : "$mode\n");

    if ($mode eq 'down') {
        $self->stop_proc('chef', 'TERM', 5);
    } elsif (!$self->alive('chef')) {
        $self->start_chef;
    }
    $self->log("chef api fault: $mode");
}

sub nginx_conf {
    my ($self, $fe) = @_;
    my $d = "$self->{dir}/$fe";
    my $port = $self->port($fe);
    my $org = $self->{org};

    my $load = $MODULE eq 'static' ? '' : "load_module $MODULE;";

    return <<"EOF";
$load

worker_processes $self->{workers};
daemon off;
pid $d/nginx.pid;
error_log $d/error.log info;
worker_rlimit_nofile 8192;

events {
    worker_connections 4096;
}

http {
    access_log $d/access.log;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;

    # the Chef server API (here: its test stand-in)
    upstream chef_api {
        server 127.0.0.1:$self->{chef_port};
        keepalive 8;
    }

    pushjobs_postgres "host=127.0.0.1 port=$self->{pg_port} dbname=pushjobs user=pushjobs application_name=pushjobs";
    pushjobs_key_zone pushjobs_keys:4m $self->{key_zone};
    pushjobs_chef_user pivotal;
    pushjobs_chef_key $self->{users}{pivotal}{key};
    pushjobs_server_name $fe;
@{[ $self->ui_directive ]}
$self->{nginx_extra}
    server {
        listen 127.0.0.1:$port ssl@{[ $self->{http2} ? ' http2' : '' ]} reuseport;
        server_name localhost;

        ssl_certificate $self->{dir}/tls/server.crt;
        ssl_certificate_key $self->{dir}/tls/server.key;
        ssl_session_ticket_key $self->{dir}/tls/ticket.key;
@{[ $self->{fe}{$fe}{server_extra} // '' ]}
        location ~ ^/organizations/[^/]+/pushy/ {
            pushjobs;
            client_max_body_size 0;
            client_body_buffer_size 1m;
        }

        location = /pushy/_status {
            pushjobs_status;
        }

        location = /pushy/_metrics {
            pushjobs_metrics;
        }

        # the module's own, signed, in-memory requests to the Chef API
        location /_pushjobs_chef/ {
            internal;
            proxy_pass http://chef_api/;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            subrequest_output_buffer_size 64k;
        }

        location / {
            proxy_pass http://chef_api;
            proxy_http_version 1.1;
            proxy_set_header Host \$http_host;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-Proto https;
        }
    }
}
EOF
}

# start_nginx([NAME], [server_extra => TEXT]): a front end, fe1 unless
# named; its files live in DIR/NAME (nginx.conf, error.log, access.log).
# server_extra goes into its server block, before the pushy location.
# The job pages (pushjobs_ui): the repository's ui/ unless the test gives
# its own directory (ui => DIR), none when neither exists.
sub ui_directive {
    my ($self) = @_;
    my $dir = $self->{ui} // "$ROOT/ui";
    return -d $dir ? "pushjobs_ui $dir;" : '';
}

sub start_nginx {
    my ($self, $fe, %opt) = @_;
    $fe //= 'fe1';
    $self->{fe}{$fe}{server_extra} = $opt{server_extra}
        if defined $opt{server_extra};
    my $d = "$self->{dir}/$fe";
    make_path("$d/tmp");

    $self->{fe}{$fe}{port} //= free_port();
    spew("$d/nginx.conf", $self->nginx_conf($fe));

    $self->spawn("nginx:$fe", "$d/stdout.log", $NGINX, '-p', $d, '-c',
                 "$d/nginx.conf");

    wait_for(20, sub {
        my $res = $self->http->get($self->url($fe) . '/pushy/_status');
        $res->{status} == 200 && $res->{content} =~ /alive/;
    }) or croak "nginx did not come up:\n" . slurp("$d/stdout.log")
               . slurp("$d/error.log");

    $self->log("nginx $fe on " . $self->port($fe));
}

sub stop_nginx {
    my ($self, $fe, $sig) = @_;
    $self->stop_proc('nginx:' . ($fe // 'fe1'), $sig // 'QUIT', 10);
}

sub frontends { sort keys %{ $_[0]{fe} } }

# HTTP::Tiny writes a request's head and body separately: without
# TCP_NODELAY, Nagle's algorithm and nginx's delayed ACK add ~40 ms to every
# request with a body.
{
    no warnings 'redefine';
    my $connect = \&HTTP::Tiny::Handle::connect;
    *HTTP::Tiny::Handle::connect = sub {
        my $h = $connect->(@_);
        setsockopt($h->{fh}, Socket::IPPROTO_TCP(), Socket::TCP_NODELAY(), 1);
        return $h;
    };
}

sub http {
    my ($self) = @_;
    return $self->{http} //= HTTP::Tiny->new(
        timeout => 30,
        verify_SSL => 1,
        SSL_options => { SSL_ca_file => "$self->{dir}/tls/server.crt" },
        agent => 'pushjobs-tests/0.1',
    );
}

# client_rb(NAME, fe => 'fe2'): the agent's config, pointing at a front end.
sub client_rb {
    my ($self, $name, %opt) = @_;
    my $url = $self->url($opt{fe});
    my $d = $self->agent_dir($name);
    make_path("$d/spool", { mode => 0700 });

    my $wl = join ",\n",
        (map { "  \"$_\" => \"$self->{whitelist}{$_}\"" }
             sort keys %{ $self->{whitelist} }),
        (map { "  /$_->[0]/ => '$_->[1]'" } @{ $self->{whitelist_regex} });

    my $rb = <<"EOF";
# client.rb of $name, written by the pushjobs test stack
node_name "$name"
chef_server_url "$url/organizations/$self->{org}"
client_key "$self->{clients}{$name}{key}"
ssl_verify_mode :verify_peer
ssl_ca_file "$self->{dir}/tls/server.crt"
file_dir "$d/files"
whitelist({
$wl
})
$self->{client_rb_extra}
EOF
    spew("$d/client.rb", $rb);
    return "$d/client.rb";
}

# start_agent(NAME, fe => 'fe2', args => [...]): args are added flags
sub start_agent {
    my ($self, $name, %opt) = @_;
    my $rb = $self->client_rb($name, %opt);
    my $d = dirname($rb);
    $self->spawn("agent:$name", "$d/agent.log", $AGENT, '-c', $rb,
                 '--spool', "$d/spool", '-v', @{ $opt{args} // [] });
}

sub stop_agent {
    my ($self, $name, $sig) = @_;
    $self->stop_proc("agent:$name", $sig);
}

sub agent_names { map { "node$_" } 1 .. $_[0]{agents} }

sub start_agents {
    my ($self) = @_;
    $self->start_agent($_) for $self->agent_names;
    $self->wait_online([ $self->agent_names ], 30)
        or croak "agents did not come online:\n"
                 . join('', map { slurp($self->agent_log($_)) }
                                $self->agent_names)
                 . $self->error_log;
}

# Until every named node is available (online, no job held): node_states
# lists offline nodes too, and a node whose old channel's offline write
# lands after the new hello is listed but not available.
sub wait_online {
    my ($self, $names, $timeout) = @_;
    my %want = map { $_ => 1 } @$names;
    return wait_for($timeout // 30, sub {
        my $res = $self->request('GET', "/organizations/$self->{org}/pushy/node_states");
        return 0 unless $res->{status} == 200;
        my $states = eval { $JSON->decode($res->{content}) } || [];
        my $n = grep { $want{ $_->{node_name} }
                       && ($_->{availability} // '') eq 'available' } @$states;
        return $n == keys %want;
    }, 0.2);
}

# --- signed requests ------------------------------------------------------

sub signer {
    my ($self) = @_;
    return $self->{signer} if $self->{signer};
    my ($out, $in);
    my $pid = open2($out, $in, 'ruby', "$ROOT/t/lib/chef-signer.rb");
    $self->{signer} = { pid => $pid, out => $out, in => $in };
    return $self->{signer};
}

# Headers of a request signed by Chef's own signer (mixlib-authentication).
sub sign {
    my ($self, %a) = @_;
    my $s = $self->signer;
    my %req = (
        op => 'sign',
        key_file => $a{key_file} // $self->user_key($a{user} // 'alice'),
        user => $a{user} // 'alice',
        method => $a{method},
        path => $a{path},
        body => $a{body} // '',
        version => $a{version} // '1.1',
        (defined $a{timestamp} ? (timestamp => $a{timestamp}) : ()),
        (defined $a{api_version} ? (api_version => $a{api_version}) : ()),
    );
    print { $s->{in} } $JSON->encode(\%req), "\n";
    $s->{in}->flush;
    my $line = readline $s->{out};
    croak 'signer died' unless defined $line;
    my $res = $JSON->decode($line);
    croak "signer: $res->{error}" if $res->{error};
    # byte strings: JSON::PP may hand back UTF-8-flagged ones, which would
    # upgrade (and so re-encode) any binary bytes they are joined with
    utf8::encode($_) for values %{ $res->{headers} };
    return $res->{headers};
}

# request(METHOD, PATH, body => ..., user => ..., version => ...,
#         headers => {...}, unsigned => 1, sign_path => ..., sign_method =>,
#         fe => 'fe2')
sub request {
    my ($self, $method, $path, %a) = @_;
    my ($url, $opt) = $self->request_args($method, $path, %a);
    my $res = $self->http->request($method, $url, $opt);

    $res->{json} = eval { $JSON->decode($res->{content}) }
        if ($res->{headers}{'content-type'} // '') =~ /json/;
    return $res;
}

# The URL and HTTP::Tiny options of request(): signed here, in the
# process that owns the signer.
sub request_args {
    my ($self, $method, $path, %a) = @_;
    my $body = $a{body};
    $body = $JSON->encode($body) if ref $body;
    $body //= '';

    my %h = (Accept => 'application/json');
    $h{'Content-Type'} = 'application/json' if length $body;

    if (!$a{unsigned}) {
        (my $spath = $a{sign_path} // $path) =~ s/\?.*//;
        %h = (%h, %{ $self->sign(
            method => $a{sign_method} // $method,
            path => $spath,
            body => $a{sign_body} // $body,
            user => $a{user},
            key_file => $a{key_file},
            version => $a{version},
            timestamp => $a{timestamp},
            api_version => $a{api_version} // '2',
        ) });
        $h{'X-Ops-Server-API-Version'} //= $a{api_version} // '2';
    }

    %h = (%h, %{ $a{headers} }) if $a{headers};
    delete @h{ grep { !defined $h{$_} } keys %h };

    return ($self->url($a{fe}) . $path, {
        headers => \%h,
        (length $body ? (content => $body) : ()),
    });
}

# request_async(METHOD, PATH, ...): request()'s arguments; the request is
# signed at once and sent by a child process, so that the test can act
# (reload nginx, release a lock) while it waits.  Returns a handle for
# PushJobs::Stack::Async::result.
sub request_async {
    my ($self, $method, $path, %a) = @_;
    my ($url, $opt) = $self->request_args($method, $path, %a);
    pipe(my $r, my $w) or croak "pipe: $!";
    my $t0 = time;
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        close $r;
        # a connection of its own, not one the parent's client keeps alive
        my $http = HTTP::Tiny->new(%{ $self->http }{qw(timeout verify_SSL
                                                      SSL_options agent)});
        my $res = eval { $http->request($method, $url, $opt) }
                  // { status => 599, content => "$@" };
        print $w $JSON->encode({ status => $res->{status},
                                 headers => $res->{headers},
                                 content => $res->{content},
                                 at => time });
        close $w;
        POSIX::_exit(0);
    }
    close $w;
    return bless { pid => $pid, fh => $r, t0 => $t0 },
                 'PushJobs::Stack::Async';
}

# POST a job as alice; returns the job id.
sub start_job {
    my ($self, $job, %a) = @_;
    my $res = $self->request('POST', "/organizations/$self->{org}/pushy/jobs",
                             body => $job, %a);
    croak "POST /jobs: $res->{status} $res->{content}"
        unless $res->{status} == 201;
    return job_id_of($res);
}

# The job id of a POST /jobs answer (201, {"uri": ".../jobs/ID"}): the
# uri's last 32 characters, or '' without a uri.  Takes request()'s answer
# (its json) or HTTP::Tiny's (its content).  A function, not a method.
sub job_id_of {
    my ($res) = @_;
    my $body = $res->{json} // eval { $JSON->decode($res->{content} // '') };
    my $uri = ref $body eq 'HASH' ? $body->{uri} // '' : '';
    return length $uri >= 32 ? substr($uri, -32) : '';
}

# Set a group's members in the Chef API (as pivotal), creating it if needed:
# set_group(GROUP, users => [...], clients => [...], groups => [...],
#           org => ORG)
sub set_group {
    my ($self, $group, %m) = @_;
    my $org = $m{org} // $self->{org};
    my %body = (groupname => $group, actors => {
        map { $_ => $m{$_} // [] } qw(users clients groups) });
    my $res = $self->chef_request('GET', "/organizations/$org/groups/$group");
    if ($res->{status} == 404) {
        $res = $self->chef_request('POST', "/organizations/$org/groups",
                                   body => { groupname => $group });
        croak "create group $group: $res->{status} $res->{content}"
            unless $res->{status} == 201;
    }
    $res = $self->chef_request('PUT', "/organizations/$org/groups/$group",
                               body => \%body);
    croak "set group $group: $res->{status} $res->{content}"
        unless $res->{status} == 200;
}

sub delete_group {
    my ($self, $group, %a) = @_;
    my $org = $a{org} // $self->{org};
    $self->chef_request('DELETE', "/organizations/$org/groups/$group");
}

# A request straight to the Chef API stand-in, signed as pivotal.
sub chef_request {
    my ($self, $method, $path, %a) = @_;
    my $body = ref $a{body} ? $JSON->encode($a{body}) : $a{body} // '';
    my %h = (Accept => 'application/json',
             (length $body ? ('Content-Type' => 'application/json') : ()),
             %{ $self->sign(method => $method, path => $path, body => $body,
                            user => $a{user} // 'pivotal', version => '1.3',
                            api_version => '1') },
             'X-Ops-Server-API-Version' => 1);
    my $res = $self->http->request($method,
        "http://127.0.0.1:$self->{chef_port}$path",
        { headers => \%h, (length $body ? (content => $body) : ()) });
    $res->{json} = eval { $JSON->decode($res->{content}) };
    return $res;
}

sub job {
    my ($self, $id) = @_;
    my $res = $self->request('GET',
                             "/organizations/$self->{org}/pushy/jobs/$id");
    return $res->{status} == 200 ? $res->{json} : undef;
}

# A node's stored output of a job (stdout by default), or "HTTP STATUS".
sub node_output {
    my ($self, $id, $node, $stream) = @_;
    my $res = $self->request('GET',
        "/organizations/$self->{org}/pushy/jobs/$id/output/$node/"
        . ($stream // 'stdout'),
        headers => { Accept => 'application/octet-stream' });
    return $res->{status} == 200 ? $res->{content} : "HTTP $res->{status}";
}

# Wait until the job leaves new/voting/running; returns the job document.
sub wait_job {
    my ($self, $id, $timeout) = @_;
    my $job;
    wait_for($timeout // 60, sub {
        $job = $self->job($id);
        $job && $job->{status} !~ /^(new|voting|running)$/;
    }, 0.1);
    return $job;
}

# --- logs -----------------------------------------------------------------

# The error log of one front end, or of all of them.
sub error_log {
    my ($self, $fe) = @_;
    # a front end started by a test from its own tree names its log
    # ({fe}{NAME}{error_log}, e.g. t/addon.t's Chef server layout)
    return join '', map { slurp($self->{fe}{$_}{error_log}
                                // "$self->{dir}/$_/error.log") }
                        defined $fe ? ($fe) : $self->frontends;
}

# [alert], [emerg] and [crit] lines of nginx's error logs (a worker that
# "exited on signal" is an [alert]), and the first line of every sanitizer
# report of the stack, except the lines a test said it causes on purpose
# (expect_alerts).
sub alerts {
    my ($self) = @_;
    $self->alerts_checked;
    return $self->log_alerts, map { $_->{summary} } $self->sanitizer_reports;
}

# The error log lines of alerts(), without the sanitizer reports; of the
# text after OFFSETS ({ FE => bytes }) when given.
sub log_alerts {
    my ($self, $offsets) = @_;
    my $log = join '', map {
        my $t = slurp($self->{fe}{$_}{error_log}
                      // "$self->{dir}/$_/error.log");
        my $o = $offsets ? $offsets->{$_} // 0 : 0;
        $o <= length $t ? substr($t, $o) : $t;
    } $self->frontends;
    my @l = grep { /\[(alert|emerg|crit)\]|exited on signal/ }
                 split /\n/, $log;
    for my $re (@{ $self->{expected_alerts} // [] }) {
        @l = grep { !/$re/ } @l;
    }
    return @l;
}

# alerts_checked(): the test has checked the error logs up to here (alerts()
# does this; so does a test's own check, e.g. PushJobs::Fault's).
sub alerts_checked {
    my ($self) = @_;
    $self->{alerts_checked}{$_} = length slurp($self->{fe}{$_}{error_log}
                                               // "$self->{dir}/$_/error.log")
        for $self->frontends;
}

# At stop, once nginx has exited: in a test that checks the error logs, an
# [alert], [emerg] or [crit] that nginx logged after the test's last check
# (while exiting, say) fails the test, as one before stop does.
sub exit_alerts_check {
    my ($self) = @_;
    my $at = $self->{alerts_checked} or return;
    my @l = $self->log_alerts($at);
    if ($INC{'Test/Builder.pm'}) {
        my $tb = Test::Builder->new;
        if (@l || !$tb->has_plan) {
            $tb->ok(!@l, 'no [alert], [emerg] or [crit] in error.log '
                         . 'after nginx exited');
        }
        $tb->diag("after stop: $_") for @l;
    } elsif (@l) {
        print STDERR "# error.log after stop: $_\n" for @l;
    }
}

# expect_alerts(qr/.../, ...): error log lines this test causes on purpose
# (e.g. qr/exited on signal 9/ after killing a worker), not counted by
# alerts.  Sanitizer reports cannot be expected away.
sub expect_alerts {
    my ($self, @re) = @_;
    push @{ $self->{expected_alerts} }, @re;
}

# --- sanitizers -------------------------------------------------------------

# Under make asan (ASAN_OPTIONS, UBSAN_OPTIONS or LSAN_OPTIONS set) every
# process started while the stack lives writes its ASan and LSan reports to
# DIR/sanitizer/ (log_path: one file per process, apart from the logs the
# tests parse); nginx workers run as nobody, hence the mode.  A report on
# stderr instead (gcc 12's UBSan ignores log_path) is found in the logs: an
# nginx worker's stderr is its error log, an agent's its agent.log.  The
# options the stack found are given back at stop.
my $SANITIZER_RE = qr/AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer
                     |runtime\ error:|ThreadSanitizer/x;

sub sanitizer_setup {
    my ($self) = @_;
    my $d = "$self->{dir}/sanitizer";
    make_path($d);
    chmod 01777, $d;
    for my $var (qw(ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS)) {
        next unless defined $ENV{$var};
        $self->{saved_env}{$var} = $ENV{$var};
        $ENV{$var} = join ':', (grep { length && !/^log_path=/ }
                                     split /:/, $ENV{$var}),
                               "log_path=$d/report";
    }
}

# Every sanitizer report of the stack: the files under DIR/sanitizer/ and
# any report that went to a log of the stack instead (an nginx worker's
# stderr is its error log; an agent's is its agent.log).  Returns
# ({ file, summary, text }, ...).
sub sanitizer_reports {
    my ($self) = @_;
    # not File::Find: this also runs from DESTROY at global destruction
    my (@files, @dirs);
    @dirs = ($self->{dir}) if -d $self->{dir};
    while (defined(my $d = shift @dirs)) {
        opendir my $dh, $d or next;
        for my $e (grep { !/^\.\.?$/ } readdir $dh) {
            my $f = "$d/$e";
            if (-d $f && !-l $f) {
                push @dirs, $f unless $e eq 'pg' || $e eq 'spool';
            } elsif (-f $f && ($d =~ m{/sanitizer$} || $e =~ /\.log$/)) {
                push @files, $f;
            }
        }
        closedir $dh;
    }
    push @files, grep { defined } map { $self->{fe}{$_}{error_log} }
                                      keys %{ $self->{fe} // {} };
    my @r;
    for my $f (sort @files) {
        my $text = slurp($f);
        next unless $text =~ $SANITIZER_RE;
        # from a log, the report only
        $text =~ s/\A.*?^(?=[^\n]*$SANITIZER_RE)//ms;
        my ($first) = grep { /$SANITIZER_RE/ } split /\n/, $text;
        push @r, { file => $f, summary => "$f: $first", text => $text };
    }
    return @r;
}

# At stop: a sanitizer report anywhere in the stack fails the test, and is
# printed.
sub sanitizer_check {
    my ($self) = @_;
    my @r = $self->sanitizer_reports;
    if ($INC{'Test/Builder.pm'}) {
        my $tb = Test::Builder->new;
        if (@r || ($ENV{PUSHJOBS_SANITIZED} && !$tb->has_plan)) {
            $tb->ok(!@r, 'no sanitizer report in the stack\'s logs');
        }
        $tb->diag("sanitizer report in $_->{file}:\n"
                  . substr($_->{text}, 0, 20000)) for @r;
    } elsif (@r) {
        print STDERR "# sanitizer report in $_->{file}:\n$_->{text}\n"
            for @r;
    }
    for my $var (keys %{ $self->{saved_env} // {} }) {
        $ENV{$var} = $self->{saved_env}{$var};
    }
}

# --- stop -----------------------------------------------------------------

sub stop {
    my ($self) = @_;
    return if $self->{stopped}++ || $self->{owner} != $$;
    delete $LIVE{"$self"};

    for my $name (grep { /^agent:/ } keys %{ $self->{procs} }) {
        $self->stop_proc($name, 'TERM', 5);
    }

    if (my $s = delete $self->{signer}) {
        close $s->{in};
        waitpid $s->{pid}, 0;
    }

    $self->stop_nginx($_) for $self->frontends;
    $self->stop_proc('chef', 'TERM', 5);

    if ($self->{pg_up}) {
        eval {
            $self->run_cmd(@{ $self->{pg_as} }, "$PGBIN/pg_ctl", '-D',
                           "$self->{dir}/pg/data", '-m', 'immediate', '-w',
                           'stop');
        };
        $self->{pg_up} = 0;
    }

    eval { $self->exit_alerts_check };
    eval { $self->sanitizer_check };

    if ($ENV{PUSHJOBS_KEEP}) {
        print STDERR "# stack kept in $self->{dir}\n";
    } else {
        remove_tree($self->{dir});
    }
}

sub DESTROY { $_[0]->stop }

package PushJobs::Stack::Async;

use Carp qw(croak);
use IO::Select;
use POSIX ();
use Time::HiRes qw(time);

# result(TIMEOUT): the response of request_async() as request() returns it,
# plus {took}, seconds from the call to the response; undef if none came
# within TIMEOUT seconds (the child is then killed).
sub result {
    my ($self, $timeout) = @_;
    return $self->{res} if $self->{res};
    my $deadline = time + $timeout;
    my $sel = IO::Select->new($self->{fh});
    my ($buf, $eof) = ('', 0);
    while (!$eof && (my $left = $deadline - time) > 0) {
        $sel->can_read($left) or next;
        my $n = sysread $self->{fh}, $buf, 65536, length $buf;
        croak "read: $!" unless defined $n;
        $eof = $n == 0;
    }
    # the child exits right after it has written the response
    kill 'KILL', $self->{pid} unless $eof;
    waitpid $self->{pid}, 0;
    delete $self->{pid};
    return undef unless $eof;
    my $res = eval { PushJobs::Stack::json()->decode($buf) } or return undef;
    $res->{took} = $res->{at} - $self->{t0};
    $res->{json} = eval { PushJobs::Stack::json()->decode($res->{content}) }
        if ($res->{headers}{'content-type'} // '') =~ /json/;
    return $self->{res} = $res;
}

sub DESTROY {
    my ($self) = @_;
    return if $self->{res} || !$self->{pid};
    kill 'KILL', $self->{pid};
    waitpid $self->{pid}, 0;
}

1;
