# The Chef server add-on: omnibus/bin/pushjobs-ctl turns push jobs on in a
# directory tree laid out like a Chef Infra Server 15.10.x: nginx.conf and
# chef_https_lb.conf rendered from templates shaped like Chef's own (main
# context without any include, Chef's error_page to @errorrespfilter, the
# addon.d includes in their real contexts) by a stand-in for the nginx part
# of chef-server-ctl reconfigure that instance_evals chef-server.rb as Chef
# does (t/fixtures/chef-server), a veil v2 credential store, the version
# manifest, a leftover Push Jobs 2.x snippet; the stack's PostgreSQL as the
# Chef server's and the Chef API stand-in as erchef.  (The superuser's
# password over TCP, sqitch as Chef calls it and external PostgreSQL are
# t/addon-db.t's.)  After reconfigure a job runs end to end; then Chef
# renders nginx.conf again (with and without an operator's
# worker_processes), the Chef server "upgrades" to an nginx the module does
# not fit and back, and push jobs is disabled: after each, nginx restarted,
# a plain Chef API request still answers, and push jobs is on or says why
# it is off.

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
use PushJobs::ChefSecrets;
use PushJobs::Fault qw(worker_pids);

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
          "$ngx/etc/nginx.d", "$ngx/ca", "$ngx/tmp", "$ngx/html", $logs,
          "$root/opt/opscode", "$root/opt/pushjobs/embedded/lib");
chmod 0755, $root;

my $port = PushJobs::Stack::free_port();
my $json = JSON::PP->new->canonical->pretty;

spew("$root/opt/opscode/version-manifest.json",
     $json->encode({ build_version => '15.10.91' }), 0644);
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
PushJobs::ChefSecrets::write_veil("$root/etc/opscode/private-chef-secrets.json", {
    postgresql => { db_superuser_password => 'trusted-locally-here' },
    opscode_erchef => { sql_password => 'not-ours' },
});
copy($stack->user_key('pivotal'), "$root/etc/opscode/pivotal.pem") or die $!;
chmod 0600, "$root/etc/opscode/pivotal.pem";
copy("$dir/tls/server.crt", "$ngx/ca/localhost.crt") or die $!;
copy("$dir/tls/server.key", "$ngx/ca/localhost.key") or die $!;

# an operator's chef-server.rb
spew("$root/etc/opscode/chef-server.rb", <<'EOF', 0644);
api_fqdn 'localhost'
nginx['client_max_body_size'] = '250m'
EOF

# Push Jobs 2.x's addon.d file, left behind: its location takes the same
# routes (among regex locations the first one wins)
my $leftover = "$ngx/etc/addon.d/10-push_jobs_external.conf";
spew($leftover, <<'EOF', 0644);
location ~ "^/organizations/([^/]+)/pushy/" {
    return 200 "opscode-pushy-server 2.x\n";
}
EOF

# The module as the package installs it (the test replaces it, to play an
# nginx it does not fit, by rename: the running nginx keeps its mapping).
my $module = "$root/opt/pushjobs/embedded/lib/ngx_pushjobs_module.so";
copy($PushJobs::Stack::DYNAMIC_MODULE, $module) or die $!;

# The nginx part of chef-server-ctl reconfigure: render (restart: below).
my $RENDER = "$PushJobs::Stack::ROOT/t/fixtures/chef-server/"
           . 'chef-server-ctl-reconfigure.rb';
sub chef_render {
    my $out = `ruby $RENDER $root 2>&1`;
    die "chef-server-ctl reconfigure stand-in failed: $out" if $?;
    return $out;
}
chef_render();

spew("$root/etc/pushjobs/pushjobs.rb", <<'EOF', 0644);
# pushjobs settings (test)
ping_interval 5
voting_timeout 30
max_output_size "128k"
db_pool_size 2
pushjobs['key_cache_size'] = "2m"
key_chef_rate "20r/s"
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
               '--module', $module,
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

# What a Chef API client sees: erchef's /_status, through nginx.
sub chef_api_ok {
    my $res = $stack->http->get($stack->url . '/_status');
    return $res->{status} == 200;
}

# Who answers the /pushy/ routes: us (an unsigned request gets the
# module's error), the 2.x leftover, or erchef.
sub pushy_route {
    my $res = $stack->http->get($stack->url . '/organizations/demo/pushy/jobs');
    return 'push jobs 2.x' if $res->{content} =~ /opscode-pushy-server/;
    return 'pushjobs' if $res->{status} =~ /^40[01]$/
                         && !$res->{headers}{'x-errorrespfilter'}
                         && $res->{content} =~ /"error"/;
    return "other $res->{status}";
}

# A freshly started worker answers 503 until its PostgreSQL connection is
# up (slow under ASan): wait for the module's answer, bounded.
sub pushjobs_on {
    return PushJobs::Stack::wait_for(20, sub { status_of() eq 'pushjobs' });
}

sub start_nginx {
    $stack->spawn('nginx:fe1', "$logs/stdout.log", $NGINX, '-c', $conf);
    return PushJobs::Stack::wait_for(20, sub { status_of() ne 'down' });
}

# component_runit_service[nginx] :restart, after Chef rendered nginx.conf
sub chef_restart {
    $stack->stop_nginx('fe1');
    return start_nginx();
}

$stack->{fe}{fe1} = { port => $port, error_log => "$logs/error.log" };
ok start_nginx(), 'the Chef server nginx is up'
    or diag slurp("$logs/stdout.log");
ok chef_api_ok(), 'the Chef API answers through it';
is status_of(), 'other 404', 'no push jobs before reconfigure';
is pushy_route(), 'push jobs 2.x', 'the 2.x leftover has the /pushy/ routes';

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
like $out, qr/warning: \Q$leftover\E is Push Jobs 2\.x's/,
    'it warns of the 2.x leftover';

my $pj = "$ngx/etc/pushjobs/enabled";
my $up = "$pj/pushjobs_http.conf";
my $ext = "$pj/pushjobs_server.conf";
my $rb = "$root/etc/opscode/chef-server.rb";
my $sec = "$root/etc/opscode/pushjobs-secrets.json";
my $pw = PushJobs::ChefSecrets::read_veil($sec)->{pushjobs}{sql_password}
    // '';
like $pw, qr/^[0-9a-f]{48}$/, 'a generated PostgreSQL password is kept in '
                            . 'pushjobs-secrets.json';
is sprintf('%04o', (stat $sec)[2] & 07777), '0600', 'secrets file is 0600';
is sprintf('%04o', (stat $up)[2] & 07777), '0600',
    'the http{} file (it holds the password) is 0600';
like slurp($up), qr/password=\Q$pw\E /, 'the module gets the password';
unlike slurp($ext), qr/\Q$pw\E/, 'no password in the server{} file';
like slurp($up), qr/^pushjobs_ping_interval 5s;$/m, 'ping_interval mapped';
like slurp($up), qr/^pushjobs_voting_timeout 30s;$/m, 'voting_timeout mapped';
like slurp($up), qr/^pushjobs_max_output_size 128k;$/m,
    'max_output_size mapped';
like slurp($up), qr/^pushjobs_postgres_pool 2;$/m, 'db_pool_size mapped';
like slurp($up), qr{^pushjobs_key_zone pushjobs_keys:2m rate=20r/s;$}m,
    'key_cache_size and key_chef_rate mapped';
like slurp($up), qr{^pushjobs_chef_key \Q$root\E/etc/opscode/pivotal\.pem;$}m,
    'the Chef superuser key';
like slurp("$pj/pushjobs_main.conf"), qr/^load_module \Q$module\E;$/m,
    'load_module in the main{} file';
like slurp($conf),
    qr/^worker_processes \d+;\ninclude \Q$pj\E\/\*_main\.conf;$/m,
    'nginx.conf includes it, right after worker_processes';
like slurp("$ngx/etc/addon.d/00-pushjobs_upstreams.conf"),
    qr/^include \Q$pj\E\/\*_http\.conf;$/m, 'addon.d: the http{} include';
like slurp("$ngx/etc/addon.d/00-pushjobs_external.conf"),
    qr/^include \Q$pj\E\/\*_server\.conf;$/m, 'addon.d: the server{} include';
like slurp($rb), qr/\Aapi_fqdn 'localhost'\nnginx\['client_max_body_size'\] = '250m'\n# BEGIN pushjobs/,
    'chef-server.rb: our block after the operator\'s lines';
like $stack->psql('postgres', q{SELECT rolpassword FROM pg_authid
                                WHERE rolname = 'pushjobs'}),
    qr/^SCRAM-SHA-256/, 'the role has a password';

sub nginx_t {
    my $pid = open(my $fh, '-|') // die;
    if (!$pid) { open STDERR, '>&', \*STDOUT; exec $NGINX, '-t', '-c', $conf; }
    local $/;
    my $out = <$fh>;
    close $fh;
    return ($?, $out);
}
my ($trc, $tout) = nginx_t();
is $trc, 0, 'nginx -t passes with the Chef layout' or diag $tout;

ok pushjobs_on(),
    'after the reload nginx serves /pushy/_status';
is pushy_route(), 'pushjobs', 'and the /pushy/ routes, before the 2.x leftover';
ok chef_api_ok(), 'the Chef API still answers';

($rc, $out) = ctl('status');
is $rc, 0, 'status: enabled' or diag $out;

# the session ticket key: 80 random bytes, root's, in the server{} blocks
my $tk = "$root/etc/pushjobs/ticket.key";
is -s $tk, 80, 'a session ticket key of 80 bytes';
is sprintf('%04o', (stat $tk)[2] & 07777), '0600', '  mode 0600';
like slurp("$pj/pushjobs_server.conf"),
    qr{^ssl_session_ticket_key \Q$tk\E;$}m, '  given to nginx';

sub metrics_status {
    return $stack->http->get($stack->url . '/pushy/_metrics')->{status};
}
my $mres = $stack->http->get($stack->url . '/pushy/_metrics');
is $mres->{status}, 200, '/pushy/_metrics through the Chef nginx: open by '
                         . 'default, like _status';
like $mres->{content}, qr/^pushjobs_worker_processes \d+$/m, '  the metrics';

# --- a job end to end through the Chef server's nginx -----------------------

sub job_runs {
    my ($what) = @_;
    my $id = $stack->start_job({ command => "echo $what",
                                 nodes => ['node1'],
                                 capture_output => JSON::PP::true });
    my $job = $stack->wait_job($id, 60) // {};
    my $res = $stack->request('GET',
        "/organizations/demo/pushy/jobs/$id/output/node1/stdout",
        headers => { Accept => 'application/octet-stream' });
    return ($job->{status} // '') eq 'complete'
        && ($res->{content} // '') eq "$what\n";
}

$stack->start_agent('node1');
ok $stack->wait_online(['node1'], 30), 'agent online through the Chef nginx'
    or diag slurp($stack->agent_log('node1')), $stack->error_log;
ok job_runs('via chef nginx'), 'a job runs, its output through the Chef nginx';

# Chef's error_page sends the errors nginx makes to @errorrespfilter; the
# module's own answers do not go there
my $res = $stack->request('POST', '/organizations/demo/pushy/jobs',
                          body => { command => 'true', nodes => [] });
is $res->{status}, 400, 'a job without nodes: 400';
ok !$res->{headers}{'x-errorrespfilter'}, '  not rewritten by Chef\'s '
                                        . '@errorrespfilter';
like $res->{content}, qr/"error"/, '  with the contract\'s body';

# --- a second run changes nothing --------------------------------------------

my $after = listing();
($rc, $out) = ctl('reconfigure');
is $rc, 0, 'second reconfigure succeeds' or diag $out;
like $out, qr/^pushjobs: no changes$/m, 'second reconfigure: no changes';
unlike $out, qr/reloaded/, 'and no reload';
is_deeply listing(), $after, 'second reconfigure left every file as it was';

# --- chef-server-ctl reconfigure renders nginx.conf again, restarts nginx ----

$out = chef_render();
like slurp($conf),
    qr/^worker_processes auto;\ninclude \Q$pj\E\/\*_main\.conf;$/m,
    'Chef\'s render: our include, from chef-server.rb (worker_processes auto)';
ok chef_restart(), 'chef-server-ctl reconfigure: nginx restarted';
ok chef_api_ok(), '  the Chef API answers';
ok pushjobs_on(), '  push jobs is on';
ok $stack->wait_online(['node1'], 30), '  the agent is back';
ok job_runs('after chef-server-ctl reconfigure'), '  a job runs';

# an operator sets worker_processes after our block
spew($rb, slurp($rb) . "nginx['worker_processes'] = 3\n", 0644);
chef_render();
like slurp($conf),
    qr/^worker_processes 3;\ninclude \Q$pj\E\/\*_main\.conf;$/m,
    'worker_processes set after our block: 3, still with our include';
ok chef_restart(), '  nginx restarted';
ok chef_api_ok(), '  the Chef API answers';
ok pushjobs_on(), '  push jobs is on';
is scalar(() = worker_pids($stack)), 3, '  with 3 workers';
spew($rb, slurp($rb) =~ s/^nginx\['worker_processes'\] = 3\n//mr, 0644);

# --- an upgrade to a Chef server whose nginx the module does not fit ---------

{
    # The same module with another binary-compatibility signature: what
    # nginx sees of a module built for another nginx build.  Installed by
    # rename, as a package does (the running nginx keeps its mapping).
    my $so = slurp($PushJobs::Stack::DYNAMIC_MODULE);
    my $n = ($so =~ s/(\d,\d,\d,[01]{33})([01])/$1 . ($2 ? '0' : '1')/e);
    is $n, 1, 'signature found in the module';
    spew("$module.new", $so, 0644);
    rename "$module.new", $module or die $!;

    $out = chef_render();
    like $out, qr/push jobs is off \(its nginx files are parked; the Chef API is not affected\)/,
        'chef-server-ctl reconfigure: the hook parks push jobs';
    like $out, qr/is not binary compatible/, '  saying why (nginx\'s words)';
    ok -e "$ngx/etc/pushjobs/parked/pushjobs_http.conf"
       && !glob("$pj/*.conf"), '  its files are parked';
    ok chef_restart(), '  nginx restarted';
    ok chef_api_ok(), '  the Chef API answers';
    is status_of(), 'other 404', '  push jobs is off';
    is pushy_route(), 'push jobs 2.x', '  (the 2.x leftover has its routes)';
    ($rc, $out) = ctl('status');
    is $rc, 1, '  status: 1' or diag $out;
    like $out, qr/does not load into this Chef server's nginx .*\n.*is not binary compatible/,
        '  status says the module does not fit this nginx';
    like $out, qr/Install the pushjobs package built for this Chef server version/,
        '  and what to do';
    ($rc, $out) = ctl('reconfigure');
    is $rc, 1, '  pushjobs-ctl reconfigure refuses';
    like $out, qr/does not load into this Chef server's nginx/, '  saying why';
    ok chef_api_ok(), '  the Chef API still answers';

    # the matching package
    copy($PushJobs::Stack::DYNAMIC_MODULE, "$module.new") or die $!;
    rename "$module.new", $module or die $!;
    $out = chef_render();
    like $out, qr/push jobs is on/, 'the matching module: the hook unparks it';
    ok chef_restart(), '  nginx restarted';
    ok chef_api_ok(), '  the Chef API answers';
    ok pushjobs_on(), '  push jobs is on again';
    ($rc, $out) = ctl('status');
    is $rc, 0, '  status: enabled' or diag $out;
}

# --- an old Chef server ------------------------------------------------------

spew("$root/opt/opscode/version-manifest.json",
     $json->encode({ build_version => '15.10.48' }), 0644);
($rc, $out) = ctl('reconfigure');
is $rc, 1, 'Chef Infra Server 15.10.48: reconfigure refuses';
like $out, qr/Chef Infra Server 15\.10\.48 is not supported: pushjobs needs Chef Infra Server 15\.10\.50 or newer/,
    '  naming the minimum version';
spew("$root/opt/opscode/version-manifest.json",
     $json->encode({ build_version => '15.10.91' }), 0644);

# --- disable ------------------------------------------------------------------

$stack->stop_agent('node1');
($rc, $out) = ctl('disable');
is $rc, 0, 'disable succeeds' or diag $out;
like $out, qr/reloaded nginx/, 'disable reloaded nginx';
ok PushJobs::Stack::wait_for(20, sub { status_of() eq 'other 404' }),
    'after disable the pushy locations are gone';
unlike slurp($conf), qr{pushjobs/enabled}, '  nginx.conf has no include of ours';
chef_render();
is_deeply listing(), $before, 'Chef\'s next render: the tree is as before';
ok chef_restart(), '  nginx restarted';
ok chef_api_ok(), '  the Chef API answers';
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
ok pushjobs_on(),
    'push jobs back';
$stack->start_agent('node1');
ok $stack->wait_online(['node1'], 30), 'agent online again';
$stack->stop_agent('node1');

# --- nginx_no_root: the nginx master runs as the Chef user --------------------

SKIP: {
    skip 'nginx_no_root needs root (a user to create, nginx to run as it)', 12
        unless $> == 0;
    my $u = 'pushjobs-noroot';
    system('useradd', '--system', '--no-create-home', '--shell',
           '/usr/sbin/nologin', $u) unless getpwnam($u);
    my ($uid, $gid) = (getpwnam($u))[2, 3];
    my $runfile = "$root/etc/opscode/chef-server-running.json";
    my $running = slurp($runfile);
    my $r = JSON::PP->new->decode($running);
    $r->{private_chef}{user}{username} = $u;
    $r->{private_chef}{nginx}{nginx_no_root} = JSON::PP::true;
    spew($runfile, $json->encode($r), 0600);
    # what Chef's nginx recipe owns by the Chef user then; the stack's temp
    # dir is 0700
    system('chown', '-R', "$uid:$gid", $ngx, $logs) == 0 or die;
    chmod 0711, $dir;

    ($rc, $out) = ctl('reconfigure');
    is $rc, 0, 'nginx_no_root: reconfigure' or diag $out;
    is +(stat $up)[4], $uid, '  the http{} file is the Chef user\'s';
    is sprintf('%04o', (stat $up)[2] & 07777), '0600', '  and 0600';
    my $own_key = "$root/etc/pushjobs/chef-superuser.pem";
    is +(stat $own_key)[4], $uid,
        '  a copy of the superuser key, the Chef user\'s (pivotal.pem is root\'s)';
    like slurp($up), qr{^pushjobs_chef_key \Q$own_key\E;$}m, '  given to the module';

    # runit: chpst -U/-u the Chef user
    $stack->stop_nginx('fe1');
    $stack->spawn('nginx:fe1', "$logs/stdout.log", 'setpriv',
                  "--reuid=$uid", "--regid=$gid", '--clear-groups', '--',
                  $NGINX, '-c', $conf);
    ok pushjobs_on(),
        '  nginx started as the Chef user serves push jobs'
        or diag slurp("$logs/stdout.log");
    ok chef_api_ok(), '  and the Chef API';
    is +((stat "/proc/$stack->{procs}{'nginx:fe1'}")[4]), $uid,
        '  its master runs as the Chef user';
    $stack->start_agent('node1');
    ok $stack->wait_online(['node1'], 30), '  agent online';
    ok job_runs('as the chef user'), '  a job runs';
    $stack->stop_agent('node1');

    # back to a root master: Chef's reconfigure restarts nginx (a reload
    # would leave the master as it is, unable to read root's files)
    spew($runfile, $running, 0600);
    ($rc, $out) = ctl('--nginx-reload-cmd', 'true', 'reconfigure');
    is $rc, 0, 'back to a root nginx master: reconfigure' or diag $out;
    ok chef_restart(), '  nginx restarted';
}

# metrics_allow: who may scrape; others get nginx's 403
{
    my $rbfile = "$root/etc/pushjobs/pushjobs.rb";
    my $keep = slurp($rbfile);
    spew($rbfile, $keep . "metrics_allow '10.9.8.0/24, ::2'\n", 0644);
    ($rc, $out) = ctl('reconfigure');
    is $rc, 0, 'metrics_allow set: reconfigure' or diag $out;
    like slurp("$pj/pushjobs_server.conf"),
        qr{location = /pushy/_metrics \{\n    pushjobs_metrics;\n    allow 10\.9\.8\.0/24;\n    allow ::2;\n    deny all;\n}m,
        '  allow lines and deny all in the location';
    ok PushJobs::Stack::wait_for(20, sub { metrics_status() == 403 }),
        '  a scrape from elsewhere: 403';
    ok pushjobs_on(), '  _status still open';

    spew($rbfile, $keep . "metrics_allow 'example.com'\n", 0644);
    ($rc, $out) = ctl('reconfigure');
    isnt $rc, 0, 'metrics_allow with a host name: refused';
    like $out, qr/metrics_allow: expected "all" or addresses/, '  saying why';

    spew($rbfile, $keep, 0644);
    ($rc, $out) = ctl('reconfigure');
    is $rc, 0, 'metrics_allow unset: reconfigure' or diag $out;
    ok PushJobs::Stack::wait_for(20, sub { metrics_status() == 200 }),
        '  open again';
}

($rc, $out) = ctl('disable', '--purge');
is $rc, 0, 'disable --purge' or diag $out;
like $out, qr/dropped database pushjobs/, 'database dropped';
like $out, qr/dropped role pushjobs/, 'role dropped';
chef_render();
is_deeply listing(), $before, 'tree restored again';

# graceful stop first, so that shutdown problems are in the log too
$stack->stop_nginx('fe1');
like $stack->error_log, qr/pushjobs/, "the tree's error log is the one checked";
is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in the error log';

$stack->stop;
done_testing;
