# Debian packaging (debian/): dpkg-buildpackage -us -uc -b builds
# libnginx-mod-http-pushjobs (the module for Debian's nginx, through
# debhelper's nginx sequence from nginx-dev) and pushjobs-agent (with its
# systemd unit); the module loads in Debian's nginx; as root, the agent
# package installs and purges cleanly.  The build runs in a copy of the
# tree in a temporary directory, so nothing lands in the repository.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Temp qw(tempdir);
use PushJobs::Stack;

my $ROOT = $PushJobs::Stack::ROOT;

plan skip_all => 'dpkg-buildpackage is not installed (stack/install-deps)'
    unless -x '/usr/bin/dpkg-buildpackage';

my $tmp = tempdir('pushjobs-deb-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $src = "$tmp/src";
mkdir $src or die "$src: $!";

# Run a command (list form); returns (exit status, output).
sub run {
    my ($env, @cmd) = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if ($pid == 0) {
        %ENV = (%ENV, %$env);
        open STDERR, '>&', \*STDOUT;
        exec @cmd or die "exec $cmd[0]: $!\n";
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

# --- a copy of the tree: what git would commit (tracked and untracked, not
# ignored), or everything but build output without git.
{
    my @files;
    if (-d "$ROOT/.git") {
        my ($rc, $out) = run({}, 'git', '-C', $ROOT, 'ls-files', '-z',
                             '--cached', '--others', '--exclude-standard');
        die "git ls-files: $out" if $rc;
        @files = grep { -e "$ROOT/$_" || -l "$ROOT/$_" } split /\0/, $out;
    } else {
        opendir my $d, $ROOT or die $!;
        @files = grep { !/^(?:\.|\.\.|build|\.git)$/ } readdir $d;
    }
    my $list = "$tmp/files";
    open my $fh, '>', $list or die $!;
    print $fh join("\0", @files), "\0";
    close $fh;
    my ($rc, $out) = run({}, '/bin/sh', '-c',
        'tar -C "$1" --null -T "$2" -cf - | tar -C "$3" -xf -',
        'sh', $ROOT, $list, $src);
    is $rc, 0, 'copied the tree' or diag $out;
}

my ($rc, $out) = run({}, '/bin/sh', '-c', 'cd "$1" && dpkg-checkbuilddeps',
                     'sh', $src);
is $rc, 0, 'build dependencies installed (stack/install-deps)' or diag $out;

($rc, $out) = run({ DEB_BUILD_OPTIONS => 'noautodbgsym parallel=4' }, '/bin/sh', '-c',
                  'cd "$1" && dpkg-buildpackage -us -uc -b', 'sh', $src);
is $rc, 0, 'dpkg-buildpackage -us -uc -b' or diag substr($out, -4000);

my ($mod) = glob "$tmp/libnginx-mod-http-pushjobs_*.deb";
my ($agent) = glob "$tmp/pushjobs-agent_*.deb";
ok $mod && -f $mod, 'libnginx-mod-http-pushjobs built';
ok $agent && -f $agent, 'pushjobs-agent built';

sub contents {
    my ($deb) = @_;
    my (undef, $list) = run({}, '/bin/sh', '-c',
                           'dpkg-deb --fsys-tarfile "$1" | tar -t', 'sh', $deb);
    return { map { s{^\./}{/}r => 1 } split /\n/, $list };
}

sub field {
    my ($deb, $f) = @_;
    my ($rc, $out) = run({}, 'dpkg-deb', '-f', $deb, $f);
    chomp $out;
    return $out;
}

SKIP: {
    skip 'no module package', 6 unless $mod && -f $mod;
    my $c = contents($mod);
    ok $c->{'/usr/lib/nginx/modules/ngx_pushjobs_module.so'},
        'module in /usr/lib/nginx/modules';
    ok $c->{'/usr/share/nginx/modules-available/mod-http-pushjobs.conf'},
        'load snippet in modules-available';
    ok $c->{'/usr/share/pushjobs/migrations/sqitch.plan'},
        'the sqitch plan ships with the module';
    ok $c->{'/usr/share/pushjobs/sql/functions.sql'},
        'with sql/, where its changes\' "\\ir ../../sql/..." find it';
    ok $c->{'/usr/share/pushjobs/ui/job.html'}
       && $c->{'/usr/share/pushjobs/ui/job.js'},
        'the job pages (pushjobs_ui /usr/share/pushjobs/ui)';

    my $abi = '';
    if (open my $fh, '<', '/usr/share/nginx/src/debian/libnginx-mod.abisubstvars') {
        ($abi) = map { /^nginx:abi=(.*)$/ ? $1 : () } <$fh>;
    }
    like field($mod, 'Depends'), qr/(?:^|, )\Q$abi\E(?:,|$)/,
        "depends on Debian's nginx ABI ($abi)";

    # The packaged module loads in Debian's nginx.
    my $x = "$tmp/mod";
    run({}, 'dpkg-deb', '-x', $mod, $x);
    open my $fh, '>', "$tmp/t.conf" or die $!;
    print $fh "load_module $x/usr/lib/nginx/modules/ngx_pushjobs_module.so;\n"
            . "events {}\n";
    close $fh;
    ($rc, $out) = run({}, $PushJobs::Stack::DYNAMIC_NGINX, '-g',
                      "error_log $tmp/error.log; pid $tmp/nginx.pid;",
                      '-t', '-c', "$tmp/t.conf");
    is $rc, 0, "Debian's nginx loads the packaged module" or diag $out;
}

SKIP: {
    skip 'no agent package', 4 unless $agent && -f $agent;
    my $c = contents($agent);
    ok $c->{'/usr/sbin/pushjobs-agent'}, 'agent in /usr/sbin';
    my ($unit) = grep { m{/systemd/system/pushjobs-agent\.service$} } keys %$c;
    ok $unit, 'systemd unit packaged';
    ok $c->{'/usr/share/doc/pushjobs-agent/README.md'},
        'README.md uncompressed, as the unit documents it';
    unlike field($agent, 'Depends'), qr/nginx/, 'the agent needs no nginx';
}

# --- install and purge the agent package (root only) -----------------------

SKIP: {
    skip 'dpkg -i needs root', 7 if $> != 0;
    skip 'no agent package', 7 unless $agent && -f $agent;
    my (undef, $status) = run({}, 'dpkg-query', '-W', '-f=${Status}',
                              'pushjobs-agent');
    skip 'pushjobs-agent is installed on this machine: not touching it', 7
        if $status =~ /installed/;

    ($rc, $out) = run({}, 'dpkg', '-i', $agent);
    is $rc, 0, 'dpkg -i pushjobs-agent' or diag $out;
    (undef, $status) = run({}, 'dpkg-query', '-W', '-f=${Status}',
                           'pushjobs-agent');
    is $status, 'install ok installed', 'installed';
    ($rc, $out) = run({}, '/usr/sbin/pushjobs-agent', '--version');
    like $out, qr{^pushjobs-agent/}, 'the installed agent runs';
    ok -l '/etc/systemd/system/multi-user.target.wants/pushjobs-agent.service',
        'the unit is enabled';
    my @pw = getpwnam 'pushjobs-agent';
    ok @pw && $pw[2] != 0 && $pw[8] =~ m{/(nologin|false)$},
        'the network process\'s system user exists, without a login'
        or diag explain \@pw;

    ($rc, $out) = run({}, 'dpkg', '--purge', 'pushjobs-agent');
    is $rc, 0, 'dpkg --purge pushjobs-agent' or diag $out;
    ok !-e '/usr/sbin/pushjobs-agent'
       && !-l '/etc/systemd/system/multi-user.target.wants/pushjobs-agent.service',
        'purged: binary and enablement gone';
}

done_testing;
