# The Chef server add-on's PostgreSQL side: omnibus/bin/pushjobs-ctl against
# a PostgreSQL that asks every TCP login for its password (as Chef's
# pg_hba.conf does) and a Chef credential store written the way Chef server
# 12.14 and later write it (veil v2, made at test time).  reconfigure reads
# the superuser's password and key from it, creates role and database,
# deploys the plan (laid out as the packages install it) with sqitch the way
# 0.973 and 1.x take it, keeps its own password in the same layout; a second
# run changes nothing; a missing or wrong password fails at once with a
# clear error and no prompt; an external PostgreSQL whose Chef superuser has
# CREATEROLE and CREATEDB but not SUPERUSER (RDS) gets the grant; a pool
# larger than max_connections allows is warned about.
#
# PUSHJOBS_SQITCH_0973=DIR: run sqitch 0.973 from that source tree (as the
# Chef server ships it) instead of the sqitch on PATH.
# PUSHJOBS_VEIL_LIB=DIR: chef_secrets' lib/ (Ruby, needs the bcrypt gem),
# to check that veil itself reads the file pushjobs-ctl writes.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use Digest::SHA qw(sha256_hex);
use File::Find qw(find);
use File::Path qw(make_path);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time);
use PushJobs::Stack;
use PushJobs::ChefSecrets;

my $CTL = "$PushJobs::Stack::ROOT/omnibus/bin/pushjobs-ctl";
my $NGINX = $PushJobs::Stack::DYNAMIC_NGINX;
my $MODULE = $PushJobs::Stack::DYNAMIC_MODULE;

BAIL_OUT("build first (make): $MODULE") unless -e $MODULE;

my $stack = PushJobs::Stack->new(agents => 0, workers => 2);
$stack->make_keys;
$stack->start_postgres;

my $dir = $stack->dir;
my $pgport = $stack->{pg_port};
my $json = JSON::PP->new->canonical->pretty;

sub spew { PushJobs::Stack::spew(@_) }
sub slurp { PushJobs::Stack::slurp(@_) }

# Run a command with no standard input, no PG* variables and a bound;
# returns (exit status, output).
sub run_bounded {
    my ($timeout, @cmd) = @_;
    pipe(my $r, my $w) or die $!;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        POSIX::setsid();                  # no controlling terminal either
        delete $ENV{$_} for grep { /^PG/ } keys %ENV;
        close $r;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>&', $w;
        open STDERR, '>&', $w;
        exec @cmd or die "exec $cmd[0]: $!";
    }
    close $w;
    my $out = '';
    my $deadline = time + $timeout;
    my $rin = '';
    vec($rin, fileno($r), 1) = 1;
    while (1) {
        my $left = $deadline - time;
        if ($left <= 0) {
            kill 'KILL', $pid;
            waitpid $pid, 0;
            return (-1, "$out\n(killed after ${timeout}s)");
        }
        my $n = select(my $rout = $rin, undef, undef, $left);
        next if $n <= 0;
        my $got = sysread $r, my $buf, 65536;
        last unless $got;
        $out .= $buf;
    }
    waitpid $pid, 0;
    return ($? >> 8, $out);
}

# The test's own SQL: as postgres over the Unix socket (trusted there).
sub admin {
    my ($sql, $db) = @_;
    my ($rc, $out) = run_bounded(30, 'psql', '-X', '-q', '-A', '-t', '-w',
                                 '-h', "$dir/pg", '-p', $pgport, '-U',
                                 'postgres', '-d', $db // 'postgres',
                                 '-v', 'ON_ERROR_STOP=1', '-c', $sql);
    die "admin psql: $sql\n$out" if $rc;
    $out =~ s/\s+$//;
    return $out;
}

# A login over TCP with a password; returns (exit status, output).
sub login {
    my ($user, $pw, $db, $host) = @_;
    return run_bounded(30, 'env', "PGPASSWORD=$pw", 'psql', '-X', '-A', '-t',
                       '-w', '-h', $host // '127.0.0.1', '-p', $pgport,
                       '-U', $user, '-d', $db, '-c', 'SELECT 1');
}

# --- PostgreSQL as a Chef server's: passwords over TCP ----------------------

$stack->psql('postgres', 'DROP DATABASE pushjobs');
$stack->psql('postgres', 'DROP ROLE pushjobs');

my $superpass = PushJobs::ChefSecrets::random_hex(20);
my $rdspass = PushJobs::ChefSecrets::random_hex(20);
$stack->psql('postgres', "ALTER ROLE postgres PASSWORD '$superpass'");
# An RDS-like master user: CREATEDB and CREATEROLE, not SUPERUSER.
$stack->psql('postgres', 'CREATE ROLE chefadmin LOGIN CREATEDB CREATEROLE '
                         . "PASSWORD '$rdspass'");
spew("$dir/pg/data/pg_hba.conf", <<'EOF');
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
EOF
$stack->run_cmd(@{ $stack->{pg_as} }, "$PushJobs::Stack::PGBIN/pg_ctl",
                '-D', "$dir/pg/data", 'reload');
ok PushJobs::Stack::wait_for(10, sub { (login('postgres', '', 'postgres'))[0] != 0 }),
    'the fixture: a TCP login without a password is refused';
is +(login('postgres', $superpass, 'postgres'))[0], 0,
    'and the superuser logs in with its password';

# --- the plan laid out as the packages install it ---------------------------

my $share = "$dir/share";
make_path($share);
system('cp', '-R', "$PushJobs::Stack::ROOT/migrations",
       "$PushJobs::Stack::ROOT/sql", "$share/") == 0 or die 'cp';

# sqitch: 0.973 from source when given; else the one on PATH, with 0.973's
# exit status 1 after "Nothing to deploy (up-to-date)" (1.x exits 0).
my $sqitch = "$dir/sqitch";
if (my $src = $ENV{PUSHJOBS_SQITCH_0973}) {
    spew($sqitch, "#!/bin/sh\nexec perl -CAS -I'$src/lib' '$src/bin/sqitch' \"\$@\"\n", 0755);
} else {
    spew($sqitch, <<'EOF', 0755);
#!/bin/sh
out=$(sqitch "$@" 2>&1); rc=$?
printf '%s\n' "$out"
case "$out" in *"Nothing to deploy (up-to-date)"*) [ $rc = 0 ] && exit 1;; esac
exit $rc
EOF
}
my ($vrc, $version) = run_bounded(30, $sqitch, '--version');
diag "sqitch: $version";

# --- a Chef server tree -------------------------------------------------------

my $pem = slurp($stack->user_key('pivotal'));

# $name: the tree; %pg: private_chef.postgresql; %o: secrets => the
# credential store's { group => { name => value } }, settings => pushjobs.rb
sub chef_tree {
    my ($name, $pg, %o) = @_;
    my $root = "$dir/$name";
    my $ngx = "$root/var/opt/opscode/nginx";
    make_path("$root/etc/opscode", "$root/etc/pushjobs", "$ngx/etc/addon.d",
              "$ngx/logs", "$root/opt/opscode");
    # what chef-server-ctl version reads (omnibus's version manifest)
    spew("$root/opt/opscode/version-manifest.json",
         $json->encode({ build_version => '15.10.91' }), 0644);
    spew("$root/etc/opscode/chef-server-running.json", $json->encode({
        private_chef => {
            api_fqdn => 'localhost', insecure_addon_compat => JSON::PP::false,
            nginx => { dir => '/var/opt/opscode/nginx' },
            postgresql => { port => $pgport, %$pg },
        },
    }), 0600);
    PushJobs::ChefSecrets::write_veil("$root/etc/opscode/private-chef-secrets.json",
                                      $o{secrets});
    spew("$root/etc/pushjobs/pushjobs.rb", $o{settings} // '', 0644);
    spew("$ngx/etc/nginx.conf", <<"EOF", 0644);
worker_processes 2;
error_log $ngx/logs/error.log info;
pid $ngx/nginx.pid;
events {
  worker_connections 64;
}
http {
  upstream opscode_erchef {
    server 127.0.0.1:9;
  }
  include $ngx/etc/addon.d/*_upstreams.conf;
  server {
    listen 127.0.0.1:@{[ PushJobs::Stack::free_port() ]};
    include $ngx/etc/addon.d/*_external.conf;
    location / {
      return 404;
    }
  }
}
EOF
    return $root;
}

sub ctl {
    my ($root, @args) = @_;
    return run_bounded(120, $^X, $CTL, '--root', $root, '--module', $MODULE,
                       '--migrations', "$share/migrations",
                       '--sqitch', $sqitch, '--nginx-bin', $NGINX,
                       '--nginx-reload-cmd', 'true', @args);
}

sub listing {
    my ($root) = @_;
    my @l;
    find({ no_chdir => 1, wanted => sub {
        return unless -f $_;
        push @l, sprintf('%s %04o %s', substr($_, length $root),
                         (stat $_)[2] & 07777, sha256_hex(slurp($_)));
    } }, "$root/etc", "$root/var/opt/opscode/nginx/etc");
    return [ sort @l ];
}

sub mode { sprintf '%04o', (stat $_[0])[2] & 07777 }

# --- Chef server 12.14+, insecure_addon_compat false -------------------------
# No password in chef-server-running.json, no pivotal.pem: both only in the
# credential store.

my %store = (
    postgresql => { db_superuser_password => $superpass },
    'chef-server' => { superuser_key => $pem },
    opscode_erchef => { sql_password => 'not-ours' },
);
my $root = chef_tree('cs', { vip => '127.0.0.1', db_superuser => 'postgres',
                             external => JSON::PP::false },
                     secrets => \%store, settings => "db_pool_size 2\n");
my $ngx = "$root/var/opt/opscode/nginx";
my $up = "$ngx/etc/pushjobs/enabled/pushjobs_http.conf";
my $sec = "$root/etc/opscode/pushjobs-secrets.json";
my $key = "$root/etc/pushjobs/chef-superuser.pem";
my $chef_store = sha256_hex(slurp("$root/etc/opscode/private-chef-secrets.json"));
my $before = listing($root);

my ($rc, $out) = ctl($root, 'reconfigure');
is $rc, 0, 'reconfigure with a veil v2 credential store' or diag $out;
like $out, qr/created role pushjobs/, 'it created the role';
like $out, qr/created database pushjobs/, 'it created the database';
like $out, qr/deployed the schema/, 'it deployed the plan';
unlike $out, qr/warning/, 'no warning (the pool fits)';
unlike $out, qr/\Q$superpass\E/, 'the superuser password is not printed';

my @changes = grep { /^[a-z_]+ / } split /\n/, slurp("$share/migrations/sqitch.plan");
is admin('SELECT count(*) FROM sqitch.changes', 'pushjobs'), scalar @changes,
    'every change of the plan is deployed';
is admin(q{SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables
           WHERE schemaname IN ('pushjobs', 'sqitch')}, 'pushjobs'),
    'pushjobs', 'the schema and the registry belong to the pushjobs role';

my $own = eval { PushJobs::ChefSecrets::read_veil($sec) } || {};
my $pw = $own->{pushjobs}{sql_password} // '';
like $pw, qr/^[0-9a-f]{48}$/, 'its password is kept as a veil v2 file';
unlike slurp($sec), qr/\Q$pw\E/, 'which does not hold it in clear';
is mode($sec), '0600', 'mode 0600';
is +(login('pushjobs', $pw, 'pushjobs'))[0], 0,
    'the pushjobs role logs in over TCP with the kept password';
like slurp($up), qr/ password=\Q$pw\E /, 'the module gets that password';
is sha256_hex(slurp("$root/etc/opscode/private-chef-secrets.json")), $chef_store,
    "Chef's credential store is not written";

is slurp($key), $pem, 'the superuser key from the store is written';
is mode($key), '0600', 'mode 0600';
like slurp($up), qr{^pushjobs_chef_key \Q$key\E;$}m, 'and given to the module';

if (my $lib = $ENV{PUSHJOBS_VEIL_LIB}) {
    my ($vrc, $v) = run_bounded(60, 'ruby', "-I$lib", '-rveil', '-e',
        'print Veil::CredentialCollection::ChefSecretsFile.from_file(ARGV[0])'
        . '.get("pushjobs", "sql_password")', $sec);
    is $v, $pw, 'veil itself reads the kept password' or diag $v;
    ($vrc, $v) = run_bounded(60, 'ruby', "-I$lib", '-rveil', '-e',
        'print Veil::CredentialCollection::ChefSecretsFile.from_file(ARGV[0])'
        . '.get("postgresql", "db_superuser_password")',
        "$root/etc/opscode/private-chef-secrets.json");
    is $v, $superpass, "veil itself reads the fixture's store" or diag $v;
}

# --- a second run -------------------------------------------------------------

my $after = listing($root);
($rc, $out) = ctl($root, 'reconfigure');
is $rc, 0, 'second reconfigure succeeds (sqitch: nothing to deploy)'
    or diag $out;
like $out, qr/^pushjobs: no changes$/m, 'and changes nothing';
is_deeply listing($root), $after, 'every file as it was';

# --- the pool against max_connections ---------------------------------------

# 2 workers x (64 + 1) = 130 connections fit in max_connections 200 (less 3
# reserved) while nothing else is connected.
spew("$root/etc/pushjobs/pushjobs.rb", "db_pool_size 64\n", 0644);
($rc, $out) = ctl($root, 'reconfigure');
is $rc, 0, 'reconfigure with a pool of 64' or diag $out;
unlike $out, qr/warning/, 'no warning while the connections are free';
spew("$root/etc/pushjobs/pushjobs.rb", "db_pool_size 2\n", 0644);
# With 80 other clients connected, they do not.
{
    my @held;
    for (1 .. 80) {
        my $pid = fork // die;
        if ($pid == 0) {
            open STDIN, '<', '/dev/null';
            open STDOUT, '>', '/dev/null';
            exec 'psql', '-X', '-q', '-h', "$dir/pg", '-p', $pgport, '-U',
                 'postgres', '-d', 'postgres', '-c', 'SELECT pg_sleep(60)';
            exit 1;
        }
        push @held, $pid;
    }
    ok PushJobs::Stack::wait_for(30, sub {
        admin(q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'}) >= 80
    }), '80 other clients connected';
    spew("$root/etc/pushjobs/pushjobs.rb", "db_pool_size 64\n", 0644);
    ($rc, $out) = ctl($root, 'reconfigure');
    is $rc, 0, 'reconfigure with a pool too large for what is left'
        or diag $out;
    like $out, qr/warning: PostgreSQL may run out of connections: push jobs opens up to 130 \(\(db_pool_size 64 \+ 1\) x 2 nginx workers x 1 front end\(s\)\), but max_connections 200 less 3 reserved for superusers and 8\d in use by other clients \(the Chef server's services\) leaves 1\d\d\./,
        'is warned about, with the numbers' or diag $out;
    like $out, qr/Raise postgresql\['max_connections'\] in \/etc\/opscode\/chef-server\.rb \(then chef-server-ctl reconfigure\), or lower db_pool_size/,
        'and what to change';
    spew("$root/etc/pushjobs/pushjobs.rb", "db_pool_size 2\n", 0644);
    admin(q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE query LIKE 'SELECT pg_sleep%' AND pid <> pg_backend_pid()});
    waitpid $_, 0 for @held;
}
($rc, $out) = ctl($root, 'reconfigure');
is $rc, 0, 'back to a small pool' or diag $out;
unlike $out, qr/warning/, 'no warning';

# --- where the superuser password comes from, and when there is none ---------

PushJobs::ChefSecrets::write_veil("$root/etc/opscode/private-chef-secrets.json",
    { 'chef-server' => { superuser_key => $pem } });
($rc, $out) = ctl($root, 'reconfigure');
is $rc, 1, 'no superuser password anywhere: reconfigure fails';
like $out, qr/no password for the Chef PostgreSQL superuser "postgres"; tried:\n  \/etc\/opscode\/private-chef-secrets\.json \(veil v2, no postgresql db_superuser_password\)\n  \/etc\/opscode\/chef-server-running\.json/,
    'the error names what was tried' or diag $out;
unlike $out, qr/Password|killed after/, 'at once, with no prompt';

{
    my $f = "$root/etc/opscode/chef-server-running.json";
    my $r = JSON::PP->new->decode(slurp($f));
    $r->{private_chef}{postgresql}{db_superuser_password} = $superpass;
    spew($f, $json->encode($r), 0600);
    ($rc, $out) = ctl($root, 'reconfigure');
    is $rc, 0, 'insecure_addon_compat: the password from chef-server-running.json'
        or diag $out;
    like $out, qr/no changes/, 'finds everything in place';

    $r->{private_chef}{postgresql}{db_superuser_password} = 'wrong';
    spew($f, $json->encode($r), 0600);
    ($rc, $out) = ctl($root, 'reconfigure');
    is $rc, 1, 'a wrong password: reconfigure fails';
    like $out, qr/password authentication failed for user "postgres"/,
        "with PostgreSQL's error" or diag $out;
    unlike $out, qr/Password for user|killed after/, 'at once, with no prompt';
    unlike $out, qr/wrong/, 'and without the password';
    delete $r->{private_chef}{postgresql}{db_superuser_password};
    spew($f, $json->encode($r), 0600);
}
PushJobs::ChefSecrets::write_veil("$root/etc/opscode/private-chef-secrets.json",
                                  \%store);

# --- disable ------------------------------------------------------------------

($rc, $out) = ctl($root, 'disable', '--purge');
is $rc, 0, 'disable --purge' or diag $out;
like $out, qr/removed \Q$key\E/, 'removes the key it wrote';
like $out, qr/dropped database pushjobs/, 'drops the database';
is_deeply [ grep { !m{/private-chef-secrets\.json } } @{ listing($root) } ],
          [ grep { !m{/private-chef-secrets\.json } } @$before ],
    'the tree is as before';

# --- an external PostgreSQL: a superuser without SUPERUSER (RDS) ------------

my $ext = chef_tree('ext', { vip => 'localhost', db_superuser => 'chefadmin',
                             external => JSON::PP::true },
                    secrets => {
                        postgresql => { db_superuser_password => $rdspass },
                        'chef-server' => { superuser_key => $pem } },
                    settings => qq{db_name "pushjobs_ext"\ndb_user "pushjobs_ext"\n});
is admin(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'chefadmin'}), 'f',
    'the fixture: chefadmin is no superuser';
($rc, $out) = ctl($ext, 'reconfigure');
is $rc, 0, 'reconfigure on an external PostgreSQL' or diag $out;
like $out, qr/granted role pushjobs_ext to chefadmin/,
    "it grants the new role to Chef's superuser";
like $out, qr/created database pushjobs_ext/, 'so that it can create its database';
like $out, qr/deployed the schema/, 'and the plan is deployed';
my $eup = slurp("$ext/var/opt/opscode/nginx/etc/pushjobs/enabled/pushjobs_http.conf");
like $eup, qr/"host=localhost port=$pgport /, 'the module connects by host name';
unlike $eup, qr/hostaddr/, 'with no resolved address pinned';
($rc, $out) = ctl($ext, 'reconfigure');
like $out, qr/^pushjobs: no changes$/m, 'a second run changes nothing' or diag $out;
($rc, $out) = ctl($ext, 'disable', '--purge');
is $rc, 0, 'disable --purge as the non-superuser' or diag $out;
like $out, qr/dropped role pushjobs_ext/, 'drops database and role';

$stack->stop;
done_testing;
