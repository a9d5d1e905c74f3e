# The Chef server add-on: omnibus/bin/pushjobs-ctl turns push jobs on in a
# directory tree laid out like a Chef Infra Server (nginx.conf with Chef's
# addon.d includes, chef-server-running.json, private-chef-secrets.json,
# pivotal.pem), with the stack's PostgreSQL as the Chef server's and the
# Chef API stand-in as erchef (upstream opscode_erchef).  nginx runs from
# that tree; after reconfigure it serves a job end to end; a second
# reconfigure changes nothing; a module built for another nginx is refused
# at nginx -t and rolled back; disable gives the tree back as it was.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use Digest::SHA qw(sha256_hex);
use File::Copy qw(copy);
use File::Find qw(find);
use File::Path qw(make_path);
use PushJobs::Stack;

my $CTL = "$PushJobs::Stack::ROOT/omnibus/bin/pushjobs-ctl";
my $NGINX = $PushJobs::Stack::DYNAMIC_NGINX;

my $stack = PushJobs::Stack->new(agents => 1, workers => 2);
bail_unless_built();
$stack->make_keys;
$stack->start_postgres;
$stack->start_chef;

my $dir = $stack->dir;
my $root = "$dir/cs";
my $ngx = "$root/var/opt/opscode/nginx";
my $conf = "$ngx/etc/nginx.conf";
my $logs = "$root/var/log/opscode/nginx";

sub bail_unless_built {
    for ($PushJobs::Stack::DYNAMIC_MODULE, $PushJobs::Stack::AGENT) {
        BAIL_OUT("build first (make): $_") unless -e $_;
    }
}

sub spew { PushJobs::Stack::spew(@_) }
sub slurp { PushJobs::Stack::slurp(@_) }

# --- the Chef server's PostgreSQL: no pushjobs database yet; the pushjobs
# role must log in with its password (as on a Chef server), the superuser
# is trusted locally here.
$stack->psql('postgres', 'DROP DATABASE pushjobs');
$stack->psql('postgres', 'DROP ROLE pushjobs');
{
    my $hba = "$dir/pg/data/pg_hba.conf";
    my $old = slurp($hba);
    open my $fh, '>', $hba or die "$hba: $!";    # keeps its owner
    print $fh "host all pushjobs 127.0.0.1/32 scram-sha-256\n", $old;
    close $fh;
    $stack->run_cmd(@{ $stack->{pg_as} }, "$PushJobs::Stack::PGBIN/pg_ctl",
                    '-D', "$dir/pg/data", 'reload');
}

# --- the Chef server tree -------------------------------------------------

make_path("$root/etc/opscode", "$root/etc/pushjobs", "$ngx/etc/addon.d",
          "$ngx/etc/nginx.d", "$ngx/ca", "$ngx/tmp", $logs);
chmod 0755, $root;

my $port = PushJobs::Stack::free_port();
my $json = JSON::PP->new->canonical->pretty;

spew("$root/etc/opscode/chef-server-running.json", $json->encode({
    private_chef => {
        api_fqdn => 'localhost',
        user => { username => 'opscode' },
        nginx => { dir => '/var/opt/opscode/nginx', ssl_port => $port },
        postgresql => { vip => '127.0.0.1', port => $stack->{pg_port},
                        db_superuser => 'postgres', external => JSON::PP::false },
        'opscode-erchef' => { vip => '127.0.0.1', port => $stack->{chef_port} },
    },
}), 0600);
spew("$root/etc/opscode/private-chef-secrets.json", $json->encode({
    postgresql => { db_superuser_password => 'trusted-locally-here' },
    'opscode_erchef' => { sql_password => 'not-ours' },
}), 0600);
copy($stack->user_key('pivotal'), "$root/etc/opscode/pivotal.pem") or die $!;
chmod 0600, "$root/etc/opscode/pivotal.pem";
copy("$dir/tls/server.crt", "$ngx/ca/localhost.crt") or die $!;
copy("$dir/tls/server.key", "$ngx/ca/localhost.key") or die $!;

# The shape of Chef's nginx.conf (private-chef cookbook): upstreams,
# addon.d/*_upstreams.conf in http{}, *_external.conf inside the API
# server{} before its catch-all location, nginx.d/*.conf last.
spew($conf, <<"EOF", 0644);
worker_processes 2;
error_log $logs/error.log info;
pid $ngx/nginx.pid;
daemon off;

events {
  worker_connections 1024;
}

http {
  server_tokens off;
  access_log $logs/access.log;
  client_body_temp_path $ngx/tmp/client_body;
  proxy_temp_path $ngx/tmp/proxy;
  fastcgi_temp_path $ngx/tmp/fastcgi;
  uwsgi_temp_path $ngx/tmp/uwsgi;
  scgi_temp_path $ngx/tmp/scgi;

  upstream opscode_erchef {
    server 127.0.0.1:$stack->{chef_port};
    keepalive 8;
  }

  # Include upstream definitions for addons
  include $ngx/etc/addon.d/*_upstreams.conf;

  # Chef HTTPS API
  server {
    listen 127.0.0.1:$port ssl;
    server_name localhost;
    ssl_certificate $ngx/ca/localhost.crt;
    ssl_certificate_key $ngx/ca/localhost.key;
    client_max_body_size 250m;

    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto https;
    proxy_read_timeout 300;

    # Include external routes for addons
    include $ngx/etc/addon.d/*_external.conf;

    location / {
      proxy_pass http://opscode_erchef;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }

  include $ngx/etc/nginx.d/*.conf;
}
EOF

spew("$root/etc/pushjobs/pushjobs.rb", <<'EOF', 0644);
# pushjobs settings (test)
ping_interval 5
voting_timeout 30
max_output_size "128k"
db_pool_size 2
pushjobs['key_cache_size'] = "2m"
EOF

# File list with modes and checksums of the configuration parts of the
# tree (logs, pid and temp files are nginx's).
sub listing {
    my @l;
    find({ no_chdir => 1, wanted => sub {
        return unless -f $_;
        my $rel = substr($_, length $root);
        push @l, sprintf('%s %04o %s', $rel, (stat $_)[2] & 07777,
                         sha256_hex(slurp($_)));
    } }, "$root/etc", "$ngx/etc");
    return [ sort @l ];
}

sub ctl {
    my (@args) = @_;
    my @cmd = ($^X, $CTL, '--root', $root,
               '--module', $PushJobs::Stack::DYNAMIC_MODULE,
               '--migrations', "$PushJobs::Stack::ROOT/migrations",
               '--nginx-bin', $NGINX,
               '--nginx-reload-cmd', "kill -HUP \$(cat $ngx/nginx.pid)",
               @args);
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd or die "exec: $!";
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

sub status_of {
    my $res = $stack->http->get($stack->url . '/pushy/_status');
    return $res->{status} == 200 && $res->{content} =~ /alive/ ? 'pushjobs'
         : $res->{status} == 599 ? 'down' : "other $res->{status}";
}

# --- the Chef server's nginx, before push jobs ---------------------------

$stack->{fe}{fe1} = { port => $port, error_log => "$logs/error.log" };
$stack->spawn('nginx:fe1', "$logs/stdout.log", $NGINX, '-c', $conf);
ok PushJobs::Stack::wait_for(20, sub { status_of() ne 'down' }),
    'the Chef server nginx is up' or diag slurp("$logs/stdout.log");
is status_of(), 'other 404', 'no push jobs before reconfigure';

my $before = listing();

# --- reconfigure ------------------------------------------------------------

my ($rc, $out) = ctl('status');
is $rc, 3, 'status: disabled before reconfigure' or diag $out;

($rc, $out) = ctl('reconfigure');
is $rc, 0, 'reconfigure succeeds' or diag $out;
like $out, qr/created role pushjobs/, 'it created the role';
like $out, qr/created database pushjobs/, 'it created the database';
like $out, qr/deployed the schema/, 'it deployed the sqitch plan';
like $out, qr/reloaded nginx/, 'it reloaded nginx';

my $up = "$ngx/etc/addon.d/40-pushjobs_upstreams.conf";
my $ext = "$ngx/etc/addon.d/40-pushjobs_external.conf";
my $sec = "$root/etc/opscode/pushjobs-secrets.json";
my $secret = eval { JSON::PP->new->decode(slurp($sec)) } || {};
my $pw = $secret->{pushjobs}{sql_password} // '';
like $pw, qr/^[0-9a-f]{48}$/, 'a generated PostgreSQL password is kept in '
                            . 'pushjobs-secrets.json';
is sprintf('%04o', (stat $sec)[2] & 07777), '0600', 'secrets file is 0600';
is sprintf('%04o', (stat $up)[2] & 07777), '0600',
    'the upstreams file (it holds the password) is 0600';
like slurp($up), qr/password=\Q$pw\E /, 'the module gets the password';
unlike slurp($ext), qr/\Q$pw\E/, 'no password in the external file';
like slurp($up), qr/^pushjobs_ping_interval 5s;$/m, 'ping_interval mapped';
like slurp($up), qr/^pushjobs_voting_timeout 30s;$/m, 'voting_timeout mapped';
like slurp($up), qr/^pushjobs_max_output_size 128k;$/m,
    'max_output_size mapped';
like slurp($up), qr/^pushjobs_postgres_pool 2;$/m, 'db_pool_size mapped';
like slurp($up), qr/^pushjobs_key_zone pushjobs_keys:2m;$/m,
    'key_cache_size mapped';
like slurp($up), qr{^pushjobs_chef_key \Q$root\E/etc/opscode/pivotal\.pem;$}m,
    'the Chef superuser key';
like slurp($conf), qr/\Aload_module \Q$PushJobs::Stack::DYNAMIC_MODULE\E; # pushjobs-ctl/,
    'load_module on the first line of nginx.conf';
like $stack->psql('postgres', q{SELECT rolpassword FROM pg_authid
                                WHERE rolname = 'pushjobs'}),
    qr/^SCRAM-SHA-256/, 'the role has a password';

my ($trc, $tout) = (0, '');
{
    my $pid = open(my $fh, '-|') // die;
    if (!$pid) { open STDERR, '>&', \*STDOUT; exec $NGINX, '-t', '-c', $conf; }
    local $/;
    $tout = <$fh>;
    close $fh;
    $trc = $?;
}
is $trc, 0, 'nginx -t passes with the Chef layout' or diag $tout;

ok PushJobs::Stack::wait_for(20, sub { status_of() eq 'pushjobs' }),
    'after the reload nginx serves /pushy/_status';

($rc, $out) = ctl('status');
is $rc, 0, 'status: enabled' or diag $out;

# --- a job end to end through the Chef server's nginx -----------------------

$stack->start_agent('node1');
ok $stack->wait_online(['node1'], 30), 'agent online through the Chef nginx'
    or diag slurp("$dir/agents/node1/agent.log"), $stack->error_log;

my $id = $stack->start_job({ command => 'echo via chef nginx',
                             nodes => ['node1'],
                             capture_output => JSON::PP::true });
my $job = $stack->wait_job($id, 60);
is $job->{status}, 'complete', 'job complete';
is_deeply $job->{nodes}, { succeeded => ['node1'] }, 'node1 succeeded'
    or diag explain $job;
my $res = $stack->request('GET',
    "/organizations/demo/pushy/jobs/$id/output/node1/stdout",
    headers => { Accept => 'application/octet-stream' });
is $res->{content}, "via chef nginx\n", 'output through the Chef nginx';

# --- a second run changes nothing --------------------------------------------

my $after = listing();
($rc, $out) = ctl('reconfigure');
is $rc, 0, 'second reconfigure succeeds' or diag $out;
like $out, qr/^pushjobs: no changes$/m, 'second reconfigure: no changes';
unlike $out, qr/reloaded/, 'and no reload';
is_deeply listing(), $after, 'second reconfigure left every file as it was';

# --- chef-server-ctl reconfigure rewrites nginx.conf from its template -----

spew($conf, join('', grep { !/pushjobs-ctl/ } split /^/, slurp($conf)), 0644);
($rc, $out) = ctl('status');
is $rc, 1, 'status: inconsistent once Chef rewrote nginx.conf' or diag $out;
like $out, qr/load_module\s+absent/, 'status names the missing load_module';
($rc, $out) = ctl('reconfigure');
is $rc, 0, 'reconfigure puts it back' or diag $out;
like $out, qr/updated \Q$conf\E/, 'only nginx.conf was updated';
is_deeply listing(), $after, 'the tree is as after the first run';

# --- a module built for another nginx ---------------------------------------

{
    # The same module with another binary-compatibility signature, as a
    # module built for another nginx build would carry.
    my $so = slurp($PushJobs::Stack::DYNAMIC_MODULE);
    my $n = ($so =~ s/(\d,\d,\d,[01]{33})([01])/$1 . ($2 ? '0' : '1')/e);
    is $n, 1, 'signature found in the module';
    make_path("$dir/other");
    spew("$dir/other/ngx_pushjobs_module.so", $so, 0644);

    # what the omnibus build records next to the module
    spew("$dir/other/ngx_pushjobs_module.so.nginx-V",
         "nginx version: openresty/1.21.4.1\n"
         . "configure arguments: --prefix=/opt/opscode/embedded/nginx\n");

    # ctl() gives --module first; the later one wins (Getopt::Long)
    ($rc, $out) = ctl('--module', "$dir/other/ngx_pushjobs_module.so",
                      'reconfigure');
    isnt $rc, 0, 'reconfigure with a mismatched module fails';
    like $out, qr/warning: .*built for another nginx/,
        'the recorded nginx -V differs: warned before nginx -t';
    like $out, qr/is not binary compatible/, 'nginx -t said why';
    like $out, qr/rolled back/, 'the change was rolled back';
    like $out, qr/built for another nginx than \Q$NGINX\E\.\s+Install/,
        'and the error explains it';
    like $out, qr{The module was built for:\nnginx version: openresty/1\.21},
        'quoting what the module was built for';
    is_deeply listing(), $after, 'the tree is as before the failed run';
    is status_of(), 'pushjobs', 'nginx keeps serving push jobs';
}

# --- disable ------------------------------------------------------------------

$stack->stop_agent('node1');
($rc, $out) = ctl('disable');
is $rc, 0, 'disable succeeds' or diag $out;
like $out, qr/reloaded nginx/, 'disable reloaded nginx';
is_deeply listing(), $before, 'disable restored the tree exactly';
ok PushJobs::Stack::wait_for(20, sub { status_of() eq 'other 404' }),
    'after disable the pushy locations are gone (erchef answers)';
($rc, $out) = ctl('disable');
like $out, qr/no changes/, 'a second disable changes nothing';
($rc, $out) = ctl('status');
is $rc, 3, 'status: disabled again';
is $stack->psql('postgres', q{SELECT count(*) FROM pg_database
                              WHERE datname = 'pushjobs'}), "1\n",
    'disable keeps the job database (--purge drops it)';

# re-enable after disable: the role gets a new password, jobs still work
($rc, $out) = ctl('reconfigure');
is $rc, 0, 'reconfigure after disable' or diag $out;
like $out, qr/set the password of role pushjobs/, 'new password for the role';
ok PushJobs::Stack::wait_for(20, sub { status_of() eq 'pushjobs' }),
    'push jobs back';
$stack->start_agent('node1');
ok $stack->wait_online(['node1'], 30), 'agent online again';
$stack->stop_agent('node1');

($rc, $out) = ctl('disable', '--purge');
is $rc, 0, 'disable --purge' or diag $out;
like $out, qr/dropped database pushjobs/, 'database dropped';
like $out, qr/dropped role pushjobs/, 'role dropped';
is_deeply listing(), $before, 'tree restored again';

# graceful stop first, so that shutdown problems are in the log too
$stack->stop_nginx('fe1');
like $stack->error_log, qr/pushjobs/, "the tree's error log is the one checked";
is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in the error log';

$stack->stop;
done_testing;
