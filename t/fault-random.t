# One randomized run: small jobs (true, sleep 1, false, echo, some with
# capture_output) posted without pause while faults strike at random for
# a bounded time: an nginx worker killed with SIGKILL, nginx reloaded, an
# agent killed with SIGKILL and restarted (before or after
# pushjobs_node_lost_timeout), an agent stopped (SIGSTOP) past the ping
# interval and continued, and, when the stack can do them, PostgreSQL
# stopped and started and the Chef API down, hung or failing.  Then every
# fault is undone, and after a bounded wait the database must show every
# job final, each node's result and vote once, no gap in any job's
# events; the org feed, read throughout with Last-Event-ID across its
# reconnects, must have seen org_events exactly once and in order; nginx
# must have logged no [alert], [crit] or worker death but those of the
# workers the run killed; and a last job must run on every agent.
#
#   PUSHJOBS_FAULT_SEED=N      replays a run (the seed is printed; the
#                              schedule of jobs and faults derives from it
#                              alone)
#   PUSHJOBS_FAULT_SECONDS=S   how long faults strike (default 60)

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use PushJobs::Stack;
use PushJobs::Fault qw(check_invariants jobs_final timed worker_pids
                       wait_channels);

my $SEED = $ENV{PUSHJOBS_FAULT_SEED} // (int(time * 1000) ^ $$) % 2**31;
my $SECONDS = $ENV{PUSHJOBS_FAULT_SECONDS} // 60;
my $AGENTS = 5;

# REST latency: without a PostgreSQL or Chef API fault on, a request must
# answer within $FAST (a margin for a loaded 2-core box); with one, within
# $SLOW (the bounded waits of those faults), and never with a status other
# than 201 or, during those faults, 502/503/504.
# A PostgreSQL or Chef API fault is on from its start until $GRACE s after
# it ended (the workers reconnect to PostgreSQL, nginx to the Chef API).
my $FAST = 5;
my $SLOW = 15;
my $GRACE = 5;

diag "seed $SEED (PUSHJOBS_FAULT_SEED=$SEED replays it), "
     . "faults for $SECONDS s";
srand $SEED;

# --- the schedule, from the seed alone --------------------------------------

my @nodes = map { "node$_" } 1 .. $AGENTS;
my @KINDS = qw(worker_kill reload agent_kill agent_stop pg chef);
my @schedule;           # [at, action, args...], sorted by at

{
    my %busy = map { $_ => 0 } @nodes;
    my ($pg_busy, $chef_busy) = (0, 0);
    my $t = 1 + rand 2;
    while ($t < $SECONDS - 4) {
        my $kind = $KINDS[ int rand @KINDS ];
        my $len;
        if ($kind eq 'worker_kill') {
            push @schedule, [ $t, 'worker_kill', int rand 2 ];
        } elsif ($kind eq 'reload') {
            push @schedule, [ $t, 'reload' ];
        } elsif ($kind eq 'agent_kill' || $kind eq 'agent_stop') {
            # restarted after 0.2..12 s (node_lost_timeout is 8 s here);
            # stopped for 2..9 s (ping interval 2 s)
            $len = $kind eq 'agent_kill' ? 0.2 + rand 12 : 2 + rand 7;
            my $i = int rand @nodes;
            my ($n) = grep { $busy{$_} <= $t }
                      map { $nodes[ ($i + $_) % @nodes ] } 0 .. $#nodes;
            if ($n && $t + $len < $SECONDS) {
                $busy{$n} = $t + $len + 1;
                my ($on, $off) = $kind eq 'agent_kill'
                    ? qw(agent_kill agent_start) : qw(agent_stop agent_cont);
                push @schedule, [ $t, $on, $n ], [ $t + $len, $off, $n ];
            }
        } elsif ($kind eq 'pg') {
            $len = 1 + rand 4;
            if ($pg_busy <= $t && $t + $len < $SECONDS) {
                $pg_busy = $t + $len + 2;
                push @schedule, [ $t, 'pg_stop' ], [ $t + $len, 'pg_start' ];
            }
        } else {
            $len = 2 + rand 3;
            my $mode = (qw(down hang error))[ int rand 3 ];
            if ($chef_busy <= $t && $t + $len < $SECONDS) {
                $chef_busy = $t + $len + 1;
                push @schedule, [ $t, 'chef_fault', $mode ],
                                [ $t + $len, 'chef_fault', 'ok' ];
            }
        }
        $t += 1.5 + rand 4;
    }

    # jobs, posted one after another
    $t = 0.5;
    my @cmds = ('true', 'sleep 1', 'false', 'echo random');
    while ($t < $SECONDS) {
        my $cmd = $cmds[ int rand @cmds ];
        my $count = 1 + int rand 3;
        my $i = int rand @nodes;
        my @on = map { $nodes[ ($i + 2 * $_) % @nodes ] } 0 .. $count - 1;
        my %job = (command => $cmd, nodes => \@on, run_timeout => 20);
        $job{capture_output} = JSON::PP::true if rand() < 0.3;
        $job{quorum} = 1 if rand() < 0.3;
        push @schedule, [ $t, 'job', \%job ];
        $t += 0.3 + rand 0.9;
    }
    @schedule = sort { $a->[0] <=> $b->[0] } @schedule;
}

# --- the stack --------------------------------------------------------------

my $s = PushJobs::Stack->new(agents => $AGENTS, workers => 2,
    nginx_extra => 'pushjobs_ping_interval 2s; '
                   . 'pushjobs_node_lost_timeout 8s; '
                   . 'pushjobs_voting_timeout 5s; '
                   . 'pushjobs_sweep_interval 200ms; '
                   . 'pushjobs_org_feed_retention 600s;');
$s->start;

my $org = $s->org;
my $base = "/organizations/$org/pushy";
my $master = $s->{procs}{'nginx:fe1'};

my (%count, %skipped, @killed, %stopped, %down, %post, @problems);
my $t0;
my $front_fault = 0;            # when a worker was last killed or reloaded
my @last = ('no fault yet');    # the latest faults, for the problems' sake
my ($pg_down, $chef_bad) = (0, 0);
my $back_at = 0;                # when the last PostgreSQL or Chef fault ended
my $late = 0;                   # the latest 50x after one ended, in seconds
my $max_fast = 0;
my $max_slow = 0;

# the faults still on are undone at the end, even when the test dies
sub undo_all {
    kill 'CONT', -$_ for values %stopped;
    %stopped = ();
    for my $n (keys %down) {
        $s->start_agent($n);
    }
    %down = ();
    if ($pg_down) {
        $s->pg_start;
        $pg_down = 0;
    }
    if ($chef_bad) {
        $s->chef_fault('ok');
        $chef_bad = 0;
    }
}
END { undo_all() if $s && !$s->{stopped} }

my %do = (
    worker_kill => sub {
        my ($i) = @_;
        my @w = worker_pids($s) or return 0;
        my $pid = $w[ $i % @w ];
        kill 'KILL', $pid or return 0;
        push @killed, $pid;
        $front_fault = time;
        return 1;
    },
    reload => sub { $front_fault = time; kill 'HUP', $master },
    agent_kill => sub {
        my ($n) = @_;
        $s->stop_agent($n, 'KILL');
        $down{$n} = 1;
    },
    agent_start => sub {
        my ($n) = @_;
        delete $down{$n} or return 0;
        $s->start_agent($n);
    },
    agent_stop => sub {
        my ($n) = @_;
        my $pid = $s->{procs}{"agent:$n"} or return 0;
        kill 'STOP', -$pid;     # both agent processes: its group
        $stopped{$n} = $pid;
    },
    agent_cont => sub {
        my ($n) = @_;
        my $pid = delete $stopped{$n} or return 0;
        kill 'CONT', -$pid;
    },
    pg_stop => sub {
        return -1 unless $s->can('pg_stop');
        $s->pg_stop;
        $pg_down = 1;
    },
    pg_start => sub {
        return -1 unless $s->can('pg_start');
        $pg_down or return 0;
        $s->pg_start;
        $pg_down = 0;
        $back_at = time;
        return 1;
    },
    chef_fault => sub {
        my ($mode) = @_;
        return -1 unless $s->can('chef_fault');
        $s->chef_fault($mode);
        $back_at = time if $chef_bad && $mode eq 'ok';
        $chef_bad = $mode ne 'ok';
        return 1;
    },
    job => sub {
        my ($job) = @_;
        my $during = $pg_down || $chef_bad || time - $back_at < $GRACE;
        my ($t, $res) = timed(sub {
            $s->request('POST', "$base/jobs", body => $job) });
        # a keepalive connection its worker closed (reload) or lost (kill)
        # just as the request went out on it, or a worker killed while it
        # answered: no response (the job may exist or not; the invariants
        # count jobs from the database); a client sends it again on a new
        # connection (counted as retried)
        if ($res->{status} == 599 && time - $front_fault < 2
            && $res->{content}
               =~ /closed by remote server|reset by peer|SSL read error/)
        {
            $post{'599, retried'}++;
            my ($t2, $res2) = timed(sub {
                $s->request('POST', "$base/jobs", body => $job) });
            ($t, $res) = ($t + $t2, $res2);
        }
        $during ||= $pg_down || $chef_bad;
        $late = time - $back_at
            if !$pg_down && !$chef_bad && $back_at
               && $res->{status} =~ /^50[234]$/ && time - $back_at > $late;
        $post{ $res->{status} }++;
        my $ok = $res->{status} == 201
                 || ($during && $res->{status} =~ /^50[234]$/);
        push @problems, sprintf('POST jobs at %.1f s (after %s): %d %s',
                                time - $t0, join(', ', @last), $res->{status},
                                substr($res->{content} // '', 0, 200))
            unless $ok;
        if ($during) {
            $max_slow = $t if $t > $max_slow;
            push @problems, sprintf('POST jobs took %.2f s (> %d s) during '
                                    . 'a PostgreSQL or Chef API fault', $t,
                                    $SLOW) if $t > $SLOW;
        } else {
            $max_fast = $t if $t > $max_fast;
            push @problems, sprintf('POST jobs at %.1f s (after %s) took '
                                    . '%.2f s (> %d s)', time - $t0,
                                    join(', ', @last),
                                    $t, $FAST) if $t > $FAST;
        }
        return 1;
    },
);

# the org feed, read throughout: only what happens from now on
my $orgfeed = PushJobs::Fault::Feed->new($s, "$base/job_status_feed");

# --- the run ----------------------------------------------------------------

$t0 = time;
for my $item (@schedule) {
    my ($at, $what, @args) = @$item;
    while (time - $t0 < $at) {
        my $left = $at - (time - $t0);
        $orgfeed->follow($left > 0.2 ? 0.2 : $left, sub { 0 });
    }
    my $r = $do{$what}->(@args);
    if (defined $r && $r eq '-1') {
        $skipped{$what}++;
    } elsif ($what ne 'job') {
        $count{ $what . ($what eq 'chef_fault' ? " $args[0]" : '') }++;
        push @last, sprintf '%s at %.1f s', join(' ', $what, @args),
                            time - $t0;
        shift @last if @last > 3;
    }
}
undo_all();
my $run = time - $t0;

# --- after the faults: everything settles within bounded waits --------------

my @w;
ok PushJobs::Stack::wait_for(30, sub { @w = worker_pids($s); @w == 2 }, 0.2),
    'two nginx workers once the faults are over' or diag "workers: @w";
ok wait_channels($s, \@nodes, 40),
    'every agent connected to a live worker again';

my @ids;
my $settled = PushJobs::Stack::wait_for(60, sub {
    @ids = split /\n/, $s->psql('pushjobs', 'SELECT id FROM pushjobs.jobs');
    return !jobs_final($s, @ids);
}, 0.5);
ok $settled, sprintf('all %d jobs final within 60 s of the last fault',
                     scalar @ids) or diag explain [ jobs_final($s, @ids) ];

is_deeply [ check_invariants($s, \@ids, killed => \@killed) ], [],
    'invariants: every job and node final, each result and vote once, no '
    . 'gap, no unexpected [alert]/[crit]/worker death';
is_deeply \@problems, [],
    "POST jobs answered 201 (or 502/503/504 during a PostgreSQL or Chef API "
    . "fault and $GRACE s after it) within $FAST s ($SLOW s during those "
    . "faults)";

# the org feed saw every start and job_complete once, in order
my $first = ((grep { $_->{id} } $orgfeed->events)[0] // {})->{id} // 'org-0';
$first =~ s/^org-//;
my @want;
$orgfeed->follow(30, sub {
    @want = map { "org-$_" } split /\n/, $s->psql('pushjobs',
        "SELECT id FROM pushjobs.org_events WHERE org = '$org' "
        . "AND id >= $first ORDER BY id");
    grep({ $_->{id} } $_[0]->events) >= @want;
});
is_deeply [ map { $_->{id} } grep { $_->{id} } $orgfeed->events ], \@want,
    sprintf('the org feed, across %d connections, saw org_events exactly '
            . 'once, in order', $orgfeed->opens);
$orgfeed->close;

my %final;
$final{$_}++ for split /\n/, $s->psql('pushjobs',
    'SELECT status FROM pushjobs.jobs');

# and the system works: a last job on every agent
my $id = eval { $s->start_job({ command => 'true', nodes => \@nodes }) };
my $job = $id ? $s->wait_job($id, 30) : undef;
is_deeply $job && $job->{nodes}, { succeeded => [ sort @nodes ] },
    'a last job runs on every agent' or do {
    diag explain $job;
    # what each agent that did not succeed said last (why it refused)
    for my $n (@nodes) {
        my $st = (grep { grep { $_ eq $n } @{ $job->{nodes}{$_} } }
                  keys %{ ($job // {})->{nodes} // {} })[0] // '?';
        next if $st eq 'succeeded';
        open my $fh, '<', $s->agent_log($n) or next;
        my @l = <$fh>;
        diag "$n ($st), agent.log ends:\n", @l[ ($#l > 30 ? $#l - 30 : 0)
                                                 .. $#l ];
    }
};

diag sprintf('seed %d: %.0f s of faults: %s%s; %d jobs (%s); POST: %s; '
             . 'slowest POST %.2f s (%.2f s during PostgreSQL/Chef faults; '
             . 'last 50x %.1f s after one ended)',
    $SEED, $run,
    join(', ', map { "$count{$_} $_" } sort keys %count) || 'none',
    (%skipped ? ' (not available here: '
                . join(', ', map { "$skipped{$_} $_" } sort keys %skipped)
                . ')' : ''),
    scalar @ids, join(', ', map { "$final{$_} $_" } sort keys %final),
    join(', ', map { "$post{$_} x $_" } sort keys %post),
    $max_fast, $max_slow, $late);

$s->stop;
done_testing;
