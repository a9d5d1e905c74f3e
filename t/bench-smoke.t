#!/usr/bin/perl
# The benchmarks' load agent (bench/loadagent.c) keeps working: built here
# with -Wall -Wextra -Werror, 100 simulated agents (one shared key, the real
# channel over TLS with Chef signatures) connect, a job across all of them
# completes, every one saw its commit, and they all come back after an
# nginx restart.  The stream benchmark's command (bench/flood.c) builds the
# same way and writes its stamped lines.  No timing assertions.

use strict;
use warnings;

use File::Temp qw(tempdir);
use Test::More;
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);

use lib 't/lib', 'bench/lib';
use PushJobs::Stack;

my $ROOT = $PushJobs::Stack::ROOT;
my $bin = tempdir('bench-smoke-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my @cc = ($ENV{CC} || 'cc', qw(-std=c99 -O2 -Wall -Wextra -Wpointer-arith
          -Wshadow -Wstrict-prototypes -Werror), '-o', "$bin/loadagent",
          "$ROOT/bench/loadagent.c", '-lssl', '-lcrypto');
my $out = `@cc 2>&1`;
is $?, 0, 'the load agent builds without warnings' or diag $out;
$ENV{PUSHJOBS_LOADAGENT} = "$bin/loadagent";

# the stream benchmark's command (bench/flood.c): 1 KB lines, stamped
my @fcc = ($ENV{CC} || 'cc', qw(-std=c99 -O2 -Wall -Wextra -Wpointer-arith
           -Wshadow -Wstrict-prototypes -Werror), '-o', "$bin/flood",
           "$ROOT/bench/flood.c");
$out = `@fcc 2>&1`;
is $?, 0, 'the flood command builds without warnings' or diag $out;
my @lines = `$bin/flood 20 1`;
is scalar(@lines), 20, '  it writes KBPS lines in a second';
is scalar(grep { length == 1024 && /^T=\d{13} x+\n\z/ } @lines), 20,
    '  each 1 KB, stamped with its write time in ms';

require PushJobs::BenchStack;

my $N = 100;
my $stack = PushJobs::BenchStack->new(agents => 0, sim => $N);
$stack->start;
$stack->start_loaders(2, inflight => 32);

ok $stack->wait_welcomed($N, 20), "$N simulated agents connected"
    or diag explain $stack->loader_stats;
ok PushJobs::Stack::wait_for(20, sub {
    $stack->psql('pushjobs',
                 'SELECT count(*) FROM pushjobs.presence WHERE online') >= $N;
}, 0.2), 'all of them online for the server';

my @names = $stack->sim_names;
my $t = clock_gettime(CLOCK_MONOTONIC);
my $id = $stack->start_job({ command => 'true', nodes => \@names });
my $job = $stack->wait_job($id, 25);
is $job->{status}, 'complete', 'the job completed';
is scalar(@{ $job->{nodes}{succeeded} // [] }), $N, 'on every node';

my @times = $stack->commit_times($id);
is scalar(@times), $N, 'every simulated agent recorded its commit';
ok !grep({ $_ < $t } @times), 'commit times are after the POST';

my ($report) = $stack->loader_cmd('report', qr/^end$/);
like "@$report", qr/job $id commits=\d+ runs=\d+ succeeded=\d+/,
     'per-job statistics';

# a restart drops every channel; all come back
my $before = $stack->loader_stats;
$stack->stop_nginx('fe1');
$stack->start_nginx('fe1');
ok PushJobs::Stack::wait_for(20, sub {
    my $s = $stack->loader_stats;
    $s->{welcomes} - $before->{welcomes} >= $N && $s->{welcomed} >= $N;
}, 0.2), 'all reconnect after an nginx restart';

is_deeply [ $stack->alerts ], [], 'no alerts in the error log';
$stack->stop;
done_testing;
