package PushJobs::Compare;

# bench/run compare: `true` on T targets three ways, on this machine:
# a push job on T connected pushjobs-agent processes, `pdsh -f T` and
# `ansible -f T` (ad hoc, command module) over ssh to T targets: host
# aliases target1..targetT of 127.0.0.1 (sshd listens on at most 16
# addresses), served by a private sshd on its own port.

use strict;
use warnings;

use File::Path qw(make_path);
use Time::HiRes qw(time sleep clock_gettime CLOCK_MONOTONIC);

use PushJobs::BenchStack;

sub mono { clock_gettime(CLOCK_MONOTONIC) }
sub note { printf STDERR "# %s %s\n", scalar(localtime), "@_" }

sub median { my @s = sort { $a <=> $b } @_; $s[$#s / 2] }

sub sh {
    my ($cmd) = @_;
    my $out = `$cmd 2>&1`;
    die "failed ($?): $cmd\n$out" if $?;
    return $out;
}

sub timed {
    my ($cmd) = @_;
    my $t = mono();
    my $out = `$cmd 2>&1`;
    my $rc = $?;
    return (mono() - $t, $rc, $out);
}

# POST -> complete of `true` on T real agents, median of $runs after one
# warm-up: from the jobs row (updated_at of the completing transaction) and
# as seen by polling GET /jobs/ID.
sub push_job {
    my ($o, %stack_opt) = @_;
    my $stack = PushJobs::BenchStack->new(agents => $o->{targets}, sim => 0,
                                          %stack_opt);
    $stack->start;
    my @nodes = $stack->agent_names;
    my (@pj, @pj_db);
    for my $r (0 .. $o->{runs}) {
        my $wall = time;
        my $t = mono();
        my $id = $stack->start_job({ command => 'true', nodes => \@nodes });
        my $job = $stack->wait_job($id, 60);
        my $tc = mono() - $t;
        die "job $id: $job->{status}\n" unless $job->{status} eq 'complete';
        my $row = $stack->psql('pushjobs',
            "SELECT extract(epoch FROM updated_at) FROM pushjobs.jobs "
            . "WHERE id = '$id'");
        next unless $r;                       # the first run warms up
        push @pj, $tc;
        push @pj_db, $row - $wall;
    }
    my $dir = $stack->dir;
    $stack->stop;
    return (median(@pj_db), median(@pj), $dir);
}

sub run {
    my ($o, $table) = @_;
    my $T = $o->{targets};
    my @rows;

    # --- push jobs ---------------------------------------------------------
    # Twice: with every agent's report spool on this machine's one disk (100
    # agents' fsyncs queue on one journal), and on a tmpfs, which is what
    # 100 nodes each fsyncing its own disk in parallel come closer to.
    my ($pj_disk, $pj_disk_polled, $stackdir) = push_job($o);
    my ($pj, $pj_polled) = push_job($o,
        spool_base => "/dev/shm/pushjobs-spool-$$");
    note(sprintf 'push job: %.1f ms (updated_at), %.1f ms (polled); '
                 . 'spool on disk: %.1f / %.1f ms',
         $pj * 1000, $pj_polled * 1000, $pj_disk * 1000,
         $pj_disk_polled * 1000);

    # --- sshd on loopback ----------------------------------------------------
    my $d = "$stackdir.ssh";
    make_path($d);
    chmod 0700, $d;
    my $port = $o->{'ssh-port'} || PushJobs::Stack::free_port();
    sh("ssh-keygen -q -t ed25519 -N '' -f $d/host_key");
    sh("ssh-keygen -q -t ed25519 -N '' -f $d/id");
    sh("cp $d/id.pub $d/authorized_keys");
    # sshd listens on at most 16 addresses: the targets are 100 host
    # names, each an ssh_config alias of 127.0.0.1
    my @addr = map { "target$_" } 1 .. $T;
    PushJobs::Stack::spew("$d/sshd_config", join '',
        "Port $port\nListenAddress 127.0.0.1\n",
        "HostKey $d/host_key\nPidFile $d/sshd.pid\n",
        "AuthorizedKeysFile $d/authorized_keys\nPermitRootLogin yes\n",
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n",
        "UsePAM no\nMaxStartups 200:30:400\nMaxSessions 200\n",
        "StrictModes no\nLogLevel ERROR\n");
    PushJobs::Stack::spew("$d/ssh_config",
        "Host target*\n  HostName 127.0.0.1\n"
        . "Host *\n  Port $port\n  IdentityFile $d/id\n  User root\n"
        . "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
        . "  LogLevel ERROR\n  BatchMode yes\n");
    mkdir '/run/sshd';
    sh("/usr/sbin/sshd -f $d/sshd_config -E $d/sshd.log");
    PushJobs::Stack::wait_for(5, sub { -s "$d/sshd.pid" });
    my $sshd = PushJobs::Stack::slurp("$d/sshd.pid") + 0;
    my $ok = eval {
        sh("ssh -F $d/ssh_config $addr[0] true");
        1;
    };
    unless ($ok) {
        kill 'TERM', $sshd if $sshd;
        die "sshd on loopback does not work: $@";
    }

    my $hosts = join ',', @addr;
    my (@pd, @an);
    my $pdsh = "PDSH_RCMD_TYPE=ssh PDSH_SSH_ARGS='-F $d/ssh_config %h' "
               . "pdsh -f $T -w $hosts true";
    PushJobs::Stack::spew("$d/inventory",
        "[targets]\n" . join('', map { "$_ ansible_host=127.0.0.1\n" } @addr)
        . "[targets:vars]\nansible_port=$port\nansible_user=root\n"
        . "ansible_ssh_private_key_file=$d/id\n"
        . "ansible_ssh_common_args='-F $d/ssh_config'\n"
        . "ansible_python_interpreter=/usr/bin/python3\n");
    my $ansible = "ANSIBLE_HOST_KEY_CHECKING=False ANSIBLE_LOCAL_TEMP=$d/tmp "
                  . "ANSIBLE_NOCOLOR=1 ansible targets -i $d/inventory "
                  . "-f $T -m command -a true";
    for my $r (1 .. $o->{runs}) {
        my ($t, $rc, $out) = timed($pdsh);
        note(sprintf 'pdsh: %.2f s (rc %d)', $t, $rc >> 8);
        print STDERR $out if $rc;
        push @pd, $t;
    }
    for my $r (1 .. ($o->{'ansible-runs'} // 1)) {
        my ($t, $rc, $out) = timed($ansible);
        my $okn = () = $out =~ /CHANGED|SUCCESS/g;
        note(sprintf 'ansible: %.2f s (rc %d, %d ok)', $t, $rc >> 8, $okn);
        push @an, $t;
    }
    kill 'TERM', $sshd;
    system('rm', '-rf', $d);

    my $pd = median(@pd);
    my $an = median(@an);
    $table->("bench/run compare --targets $T   (" . scalar(localtime) . ')',
        [ "`true` on $T targets, this machine", 'median', 'vs push job',
          'vs push job, spool on disk' ],
        [ "push job on $T connected agents, POST -> complete "
          . '(agent spools on tmpfs)', sprintf('%.1f ms', $pj * 1000), '1x',
          '' ],
        [ '  same, as seen by polling GET /jobs/ID',
          sprintf('%.1f ms', $pj_polled * 1000), '', '' ],
        [ "push job, the $T agents' spools on this machine's one disk",
          sprintf('%.1f ms', $pj_disk * 1000),
          sprintf('%.1fx', $pj_disk / $pj), '1x' ],
        [ '  same, as seen by polling GET /jobs/ID',
          sprintf('%.1f ms', $pj_disk_polled * 1000), '', '' ],
        [ "pdsh -f $T (ssh, loopback sshd)", sprintf('%.2f s', $pd),
          sprintf('%.0fx', $pd / $pj), sprintf('%.0fx', $pd / $pj_disk) ],
        [ "ansible -f $T -m command (ssh)", sprintf('%.2f s', $an),
          sprintf('%.0fx', $an / $pj), sprintf('%.0fx', $an / $pj_disk) ]);
}

1;
