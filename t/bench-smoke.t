#!/usr/bin/perl
# The benchmarks' load agent (bench/loadagent.c) keeps working: built here
# with -Wall -Wextra -Werror, 100 simulated agents (one shared key, the real
# channel over TLS with Chef signatures) connect, a job across all of them
# completes, every one saw its commit, and they all come back after an
# nginx restart; spread over two front ends, the clients of one that is
# killed come back through the other.  The stream benchmark's command (bench/flood.c) builds the
# same way and writes its stamped lines, the POST body's (bench/job-body.c)
# builds and times its three costs; bench/sql-ingest runs its jobs to
# the end.  No timing assertions.

use strict;
use warnings;

use File::Temp qw(tempdir);
use Test::More;
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);

use lib 't/lib', 'bench/lib';
use PushJobs::Stack;

my $ROOT = $PushJobs::Stack::ROOT;
my $bin = tempdir('bench-smoke-XXXXXX', TMPDIR => 1, CLEANUP => 1);
# the benchmarks' C programs, built as strictly as the module
sub build_c {
    my ($name, @args) = @_;
    my @cc = ($ENV{CC} || 'cc', qw(-std=c99 -O2 -Wall -Wextra -Wpointer-arith
              -Wshadow -Wstrict-prototypes -Werror), '-o', "$bin/$name",
              @args);
    my $out = `@cc 2>&1`;
    return ($? == 0, $out);
}

my ($built, $out) = build_c('loadagent', "$ROOT/bench/loadagent.c",
                            '-lssl', '-lcrypto');
ok $built, 'the load agent builds without warnings' or diag $out;
$ENV{PUSHJOBS_LOADAGENT} = "$bin/loadagent";

# the stream benchmark's command (bench/flood.c): 1 KB lines, stamped
($built, $out) = build_c('flood', "$ROOT/bench/flood.c");
ok $built, 'the flood command builds without warnings' or diag $out;
my @lines = `$bin/flood 20 1`;
is scalar(@lines), 20, '  it writes KBPS lines in a second';
is scalar(grep { length == 1024 && /^T=\d{13} x+\n\z/ } @lines), 20,
    '  each 1 KB, stamped with its write time in ms';

# the POST's cost before PostgreSQL (bench/job-body.c): the module's own
# validation of the body (common/job_body.c) and the body's hashes
($built, $out) = build_c('job-body', "-I$ROOT/common",
                          "$ROOT/bench/job-body.c",
                          "$ROOT/common/job_body.c",
                          "$ROOT/common/json_bound.c", '-lyajl', '-lcrypto');
ok $built, 'the POST body benchmark builds without warnings' or diag $out;
my $jb = `$bin/job-body 2000 2 2>&1`;
is $?, 0, '  it runs' or diag $jb;
like $jb, qr/^a job of 2000 nodes: a body of \d+ bytes, best of 2$/m,
     '  a body of 2000 nodes';
is scalar(() = $jb =~ /^(?:check|sha1|sha256) +[\d.]+ ms +[\d.]+ us\/node$/mg),
   3, '  checked and hashed, each timed';
is system("$bin/job-body 0 >/dev/null 2>&1") >> 8, 2,
   '  a bad N is refused (2)';

# bench/sql-ingest: node_inputs() and create_job() alone in a scratch
# PostgreSQL, here with the nodes split over 2 jobs fed at once
my $si = `"$ROOT/bench/sql-ingest" 2000 500 2 2>&1`;
is $?, 0, 'bench/sql-ingest runs' or diag $si;
like $si, qr/^jobs: 2, complete$/m, '  both jobs complete';
like $si, qr{^create_job of 2000 nodes .*: [\d.]+/[\d.]+/[\d.]+ ms$}m,
     '  create_job() timed';
like $si, qr/^events: 6004, every job numbered 1 to its count: true$/m,
     '  every event once, numbered without a gap';

# the lock plan: one job fed from 2 sessions at once, its batches holding
# it FOR SHARE, every node and event once
$si = `"$ROOT/bench/sql-ingest" 2000 250 1 2 2>&1`;
is $?, 0, 'bench/sql-ingest, one job, 2 sessions' or diag $si;
like $si, qr/^jobs: 1, complete$/m, '  the job completes';
like $si, qr/^nodes: succeeded 2000$/m, '  every node succeeded';
# 3 per node, and the job's quorum_succeeded and job_complete
like $si, qr/^events: 6002, every job numbered 1 to its count: true$/m,
     '  every event once, numbered without a gap in commit order';

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

# two front ends (bench/run scaleout): the clients are spread over both,
# and when one dies they come back through the other
sub conns_to {
    my ($fe) = @_;
    my $port = $stack->port($fe);
    # the load agents connect from 127.0.x.y, y >= 2 (not the tests' HTTP
    # client's 127.0.0.1)
    return scalar(grep { !/\s127\.0\.0\.1:\d+\s*$/ }
                  `ss -Htn state established sport = :$port`);
}
$stack->stop_loaders;
$stack->start_nginx('fe2');
$stack->start_loaders(2, inflight => 32, frontends => ['fe1', 'fe2']);
ok $stack->wait_welcomed($N, 20), 'with two front ends: all connected';
is conns_to('fe2'), $N / 2, '  half of them to fe2';
is conns_to('fe1'), $N / 2, '  half to fe1';

$before = $stack->loader_stats;
my $fe2 = delete $stack->{procs}{'nginx:fe2'};
kill 'KILL', -$fe2;
waitpid $fe2, 0;
ok PushJobs::Stack::wait_for(30, sub {
    my $s = $stack->loader_stats;
    $s->{welcomes} - $before->{welcomes} >= $N / 2 && $s->{welcomed} >= $N;
}, 0.2), 'fe2 killed: its clients came back through fe1';
is conns_to('fe1'), $N, '  all on fe1 now';

is_deeply [ $stack->alerts ], [], 'no alerts in the error log';
$stack->stop;
done_testing;
