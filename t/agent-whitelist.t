# pushjobs-agent's whitelist (contract §4.5): exact keys, regexp keys with
# \1 substitution, and lock entries (a held lock nacks the commit, a free
# one is acked and held by the agent until the job ends).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Fcntl qw(:flock);
use File::Temp qw(tempdir);
use Test::More;
use PushJobs::Stack;

my $tmp = tempdir('pushjobs-agent-wl-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $lock = "$tmp/app.lock";
my $chef_lock = "$tmp/chef-client-running.pid";

# The whole whitelist comes from the extra lines, in the push-jobs
# cookbook's shape (Hash#inspect), with both lock forms.
my $stack = PushJobs::Stack->new(
    agents => 1,
    whitelist => {},
    whitelist_regex => [],
    client_rb_extra => <<"EOF",
lockfile "$chef_lock"
whitelist({"true"=>"true", "greet"=>"echo exact", /^greet ([a-z]+)\$/=>"echo hello \\\\1", /^greet/=>"echo second regexp", "locked"=>{:command_line=>"sleep 2", :lock=>"$lock"}, "chef-locked"=>{:command_line=>"true", :lock=>true}})
EOF
);
$stack->start;

my ($node) = $stack->agent_names;

sub output { $stack->node_output($_[0], $node) }

sub run_job {
    my ($command) = @_;
    my $id = $stack->start_job({ command => $command, nodes => [$node],
                                 capture_output => JSON::PP::true });
    return ($id, $stack->wait_job($id, 30));
}

# exact key first, even when a regexp matches too
my ($id, $job) = run_job('greet');
is_deeply $job->{nodes}, { succeeded => [$node] }, 'exact key runs';
is output($id), "exact\n", 'an exact key wins over matching regexps';

# the first matching regexp, with \1 substituted
($id, $job) = run_job('greet world');
is_deeply $job->{nodes}, { succeeded => [$node] }, 'regexp key runs';
is output($id), "hello world\n", 'first matching regexp, \1 substituted';

($id, $job) = run_job('greet 42');
is output($id), "second regexp 42\n",
    'the next matching regexp; like Ruby gsub only the match is replaced';

($id, $job) = run_job('rm -rf /');
is $job->{status}, 'quorum_failed', 'no match: quorum_failed';
is_deeply $job->{nodes}, { nacked => [$node] }, 'no match: nacked';

# a lock held by someone else (a running chef-client): nacked
open my $fh, '>', $lock or die "$lock: $!";
ok flock($fh, LOCK_EX | LOCK_NB), 'the test holds the lock';
($id, $job) = run_job('locked');
is $job->{status}, 'quorum_failed', 'lock held: quorum_failed';
is_deeply $job->{nodes}, { nacked => [$node] }, 'lock held: nacked';
like PushJobs::Stack::slurp($stack->agent_log($node)),
    qr/job $id: refused: lock held/, 'the agent says why';

# the lock free: acked (not the 2.x silence), held while the job runs
flock($fh, LOCK_UN);
$id = $stack->start_job({ command => 'locked', nodes => [$node] });
ok PushJobs::Stack::wait_for(20, sub {
    my $j = $stack->job($id);
    $j && ($j->{nodes}{running} // [])->[0];
}), 'lock free: the node commits and runs';
ok !flock($fh, LOCK_EX | LOCK_NB), 'the agent holds the lock during the job';
$job = $stack->wait_job($id, 30);
is_deeply $job->{nodes}, { succeeded => [$node] }, 'lock free: succeeded';
ok PushJobs::Stack::wait_for(5, sub { flock($fh, LOCK_EX | LOCK_NB) }),
    'the lock is released when the job ends';
flock($fh, LOCK_UN);
close $fh;

# lock => true is Chef's lockfile setting
open $fh, '>', $chef_lock or die "$chef_lock: $!";
flock($fh, LOCK_EX) or die;
($id, $job) = run_job('chef-locked');
is_deeply $job->{nodes}, { nacked => [$node] },
    'lock => true: nacked while chef-client holds its lockfile';
close $fh;
($id, $job) = run_job('chef-locked');
is_deeply $job->{nodes}, { succeeded => [$node] },
    'lock => true: runs once the lockfile is free';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';
$stack->stop;
done_testing;
