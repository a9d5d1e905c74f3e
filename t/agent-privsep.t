# Privilege separation (agent/README.md): started as root, pushjobs-agent is
# two processes.  The network process runs as an unprivileged user and
# holds the channel; the root parent holds no network socket and
# starts, signals and reaps jobs only on the fixed-format requests it checks
# against its own configuration.  Each process ends when the other does;
# a job left running is ended by the next agent.  The hostile records a
# network process could send are fuzzed (fuzz/privsep.c).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

plan skip_all => 'needs root (the agent splits only when started as root)'
    if $> != 0;

my $stack = PushJobs::Stack->new(
    agents => 1,
    whitelist => {
        'uid'    => 'id -u',
        'whoami' => 'id -un',
        'sleepy' => 'sleep 3197',
    },
    whitelist_regex => [],
    client_rb_extra => qq{allowed_users ["nobody"]\nkill_grace_period 2\n},
);
$stack->start;

my ($node) = $stack->agent_names;
my $dir = $stack->agent_dir($node);
my $log = $stack->agent_log($node);
# the default user: pushjobs-agent once its package made it, else nobody
my $user = getpwnam('pushjobs-agent') ? 'pushjobs-agent' : 'nobody';
my $uid = (getpwnam $user)[2];

sub status_of {
    my ($pid) = @_;
    open my $fh, '<', "/proc/$pid/status" or return {};
    my %st = map { /^(\w+):\s*(.*)$/ ? ($1, $2) : () } <$fh>;
    return \%st;
}

# the pushjobs-agent processes whose parent is $ppid
sub children_of {
    my ($ppid) = @_;
    my @kids;
    for my $d (glob '/proc/[0-9]*') {
        my $st = status_of((split m{/}, $d)[-1]);
        push @kids, (split m{/}, $d)[-1]
            if ($st->{PPid} // '') eq $ppid
               && ($st->{Name} // '') eq 'pushjobs-agent';
    }
    return @kids;
}

# inodes of the TCP sockets a process holds
sub tcp_sockets {
    my ($pid) = @_;
    my %tcp;
    for my $f ('/proc/net/tcp', '/proc/net/tcp6') {
        open my $fh, '<', $f or next;
        <$fh>;
        while (<$fh>) { my @c = split; $tcp{ $c[9] } = 1 }
    }
    my @mine;
    for my $fd (glob "/proc/$pid/fd/*") {
        my $l = readlink $fd // next;
        push @mine, $1 if $l =~ /^socket:\[(\d+)\]$/ && $tcp{$1};
    }
    return @mine;
}

sub output { $stack->node_output($_[0], $node) }

sub run_job {
    my (%job) = @_;
    my $id = $stack->start_job({ nodes => [$node],
                                 capture_output => JSON::PP::true, %job });
    return ($id, $stack->wait_job($id, 30));
}

# exited (a zombie counts: whoever adopted it may not reap it soon)
sub gone {
    my ($pid) = @_;
    my $st = status_of($pid);
    return !%$st || ($st->{State} // '') =~ /^Z/;
}

sub sleepers { scalar grep { /\d/ } split /\n/, `pgrep -f 'sleep 319[7]'` }

# --- the two processes ---------------------------------------------------

my $parent = $stack->{procs}{"agent:$node"};
my @kids = children_of($parent);
is scalar @kids, 1, 'the agent started as root is two processes';
my $net = $kids[0];

my $ps = status_of($parent);
my $ns = status_of($net);
like $ps->{Uid}, qr/^0\s+0\s+0\s+0$/, 'the parent stays root';
like $ns->{Uid}, qr/^$uid\s+$uid\s+$uid\s+$uid$/,
    "the network process is $user: real, effective, saved, fs uid";
like $ns->{Gid}, qr/^(\d+)\s+\1\s+\1\s+\1$/, '  one gid in all four';
is $ns->{Groups} =~ s/\s+$//r, (split /\s+/, $ns->{Gid})[0],
    '  no supplementary group but its own';
is $ns->{CapEff}, '0000000000000000', '  no capability';
is $ns->{CapPrm}, '0000000000000000', '  none it could raise';

ok scalar(tcp_sockets($net)) >= 1, 'the network process holds the channel';
is_deeply [ tcp_sockets($parent) ], [], 'the root parent holds no TCP socket';

like PushJobs::Stack::slurp($log),
    qr/privsep: network process runs as $user \($uid:\d+\)/,
    'the log says who the network process is';
is +(stat "$dir/spool")[4], $uid, 'the spool is the network process\'s';

# --- jobs are the parent's -----------------------------------------------

my ($id, $job) = run_job(command => 'uid');
is_deeply $job->{nodes}, { succeeded => [$node] }, 'a job without user runs';
is output($id), "0\n", '  as root: the parent started it';

($id, $job) = run_job(command => 'whoami', user => 'nobody');
is_deeply $job->{nodes}, { succeeded => [$node] }, 'a job as an allowed user';
is output($id), "nobody\n", '  ran as nobody';

($id, $job) = run_job(command => 'whoami', user => 'daemon');
is_deeply $job->{nodes}, { nacked => [$node] },
    'a user the parent\'s allowed_users does not name: nacked';

($id, $job) = run_job(command => 'not-there');
is_deeply $job->{nodes}, { nacked => [$node] },
    'a command the parent\'s whitelist does not name: nacked';

# --- each process ends with the other -----------------------------------

# the network process killed mid-job: the parent exits, the job is left to
# the next agent, which ends it
$id = $stack->start_job({ command => 'sleepy', nodes => [$node] });
ok PushJobs::Stack::wait_for(20, sub { sleepers() == 1 }, 0.1),
    'a job runs';
kill 'KILL', $net;
ok PushJobs::Stack::wait_for(10, sub { !$stack->alive("agent:$node") }, 0.1),
    'network process killed: the parent exits';
$stack->stop_agent($node);
like PushJobs::Stack::slurp($log), qr/job $id: left running/,
    '  and says it left the job running';
is sleepers(), 1, '  the job runs on';
$stack->start_agent($node);
ok PushJobs::Stack::wait_for(30, sub { sleepers() == 0 }, 0.1),
    'the next agent ends the job left running';
ok $stack->wait_online([$node], 30), '  and comes online';
$job = $stack->wait_job($id, 60);
isnt $job->{status}, 'running', "  the job ended ($job->{status})";

# the parent killed: the network process sees the socketpair close
$parent = $stack->{procs}{"agent:$node"};
ok PushJobs::Stack::wait_for(10, sub { (@kids = children_of($parent)) == 1 },
                             0.1), 'the restarted agent is two processes';
$net = $kids[0];
kill 'KILL', $parent;
ok PushJobs::Stack::wait_for(10, sub { gone($net) }, 0.1),
    'parent killed: the network process exits';
$stack->stop_agent($node);

# --- the user ------------------------------------------------------------

my @cf = ('-c', "$dir/client.rb", '--spool', "$dir/spool");
my $out = `$PushJobs::Stack::AGENT @cf --user root 2>&1`;
isnt $? >> 8, 0, '--user root: the agent does not start';
like $out, qr/must not be root/, '  and says why';

$out = `$PushJobs::Stack::AGENT @cf --user no-such-user-pj 2>&1`;
isnt $? >> 8, 0, '--user unknown: the agent does not start';
like $out, qr/unknown user no-such-user-pj/, '  and says why';

$stack->stop;
done_testing;
