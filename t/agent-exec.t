# How pushjobs-agent runs a job: never through a shell, as `user` only when
# allowed_users lets it, in `dir`, with the job's env (renamed unless in
# allowed_overwritable_env_vars) and CHEF_PUSH_*, `file` in a private
# directory removed afterwards, output capped with `truncated` marked.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use MIME::Base64 qw(encode_base64);
use Test::More;
use PushJobs::Stack;

plan skip_all => 'needs root (jobs run as another user)' if $> != 0;

# Readable by the job's user (nobody): scripts and the file_dir.
my $tmp = tempdir('pushjobs-agent-exec-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $tmp;
mkdir "$tmp/work";
PushJobs::Stack::spew("$tmp/showfile", <<'EOF', 0755);
#!/bin/sh
f="$CHEF_PUSH_JOB_FILE"
cat "$f"; echo
stat -c '%a %U' "$f" "$(dirname "$f")"
id -un
EOF

my $stack = PushJobs::Stack->new(
    agents => 1,
    whitelist => {
        'env'      => 'env',
        'whoami'   => 'id -un',
        'pwd'      => 'pwd',
        'args'     => q{printf '[%s]' 'a b' $HOME ;},
        'showfile' => "$tmp/showfile",
        'big'      => 'seq 1 30000',
    },
    whitelist_regex => [],
    client_rb_extra => <<"EOF",
allowed_users ["nobody"]
allowed_overwritable_env_vars ["PUSHY_OK"]
file_dir "$tmp/files"
max_output_size 20000
EOF
);
$stack->start;

my ($node) = $stack->agent_names;

sub output { my ($id, $stream) = @_; $stack->node_output($id, $node, $stream) }

sub run_job {
    my (%job) = @_;
    my $id = $stack->start_job({ nodes => [$node],
                                 capture_output => JSON::PP::true, %job });
    return ($id, $stack->wait_job($id, 30));
}

# no shell: quotes split words, $HOME and ; are passed literally
my ($id, $job) = run_job(command => 'args');
is output($id), '[a b][$HOME][;]', 'the command line is not run by a shell';

# user: allowed / not allowed / unknown
($id, $job) = run_job(command => 'whoami', user => 'nobody');
is_deeply $job->{nodes}, { succeeded => [$node] }, 'allowed user: runs';
is output($id), "nobody\n", 'the job ran as nobody';

($id, $job) = run_job(command => 'whoami', user => 'daemon');
is_deeply $job->{nodes}, { nacked => [$node] }, 'user not in allowed_users: nacked';
like PushJobs::Stack::slurp($stack->agent_log($node)),
    qr/job $id: refused: user not allowed/, 'with the reason';

($id, $job) = run_job(command => 'whoami', user => 'no-such-user-xyz');
is_deeply $job->{nodes}, { nacked => [$node] }, 'unknown user: nacked';

# dir
($id, $job) = run_job(command => 'pwd', dir => "$tmp/work");
is output($id), "$tmp/work\n", 'dir is the working directory';
($id, $job) = run_job(command => 'pwd', dir => "$tmp/missing");
is_deeply $job->{nodes}, { nacked => [$node] }, 'a missing dir: nacked';

# env
($id, $job) = run_job(command => 'env',
                      env => { FOO => 'bar baz', PUSHY_OK => 'yes' });
my %env = map { /^([^=]+)=(.*)$/ ? ($1 => $2) : () } split /\n/, output($id);
is $env{CHEF_PUSH_ENV_FOO}, 'bar baz', 'a job env name is renamed CHEF_PUSH_ENV_*';
ok !exists $env{FOO}, '... and not set as is';
is $env{PUSHY_OK}, 'yes', 'allowed_overwritable_env_vars are passed as is';
is $env{CHEF_PUSH_NODE_NAME}, $node, 'CHEF_PUSH_NODE_NAME';
is $env{CHEF_PUSH_JOB_ID}, $id, 'CHEF_PUSH_JOB_ID';
ok !exists $env{CHEF_PUSH_JOB_FILE}, 'no CHEF_PUSH_JOB_FILE without a file';

# file, as root and as the job's user
($id, $job) = run_job(command => 'showfile', file => 'raw:hello file');
my @out = split /\n/, output($id);
is $out[0], 'hello file', 'raw: file contents';
is $out[1], '600 root', 'the file is 0600';
is $out[2], '700 root', 'in a private 0700 directory';

($id, $job) = run_job(command => 'showfile', user => 'nobody',
                      file => 'base64:' . encode_base64("bin\x00ary", ''));
@out = split /\n/, output($id);
is $out[0], "bin\x00ary", 'base64: file decoded';
is_deeply [ @out[1 .. 3] ], [ '600 nobody', '700 nobody', 'nobody' ],
    'file and directory belong to the job user';
my @left = glob("$tmp/files/*");
is_deeply \@left, [], 'file and directory removed after the job';

# output cap
($id, $job) = run_job(command => 'big');
is_deeply $job->{nodes}, { succeeded => [$node] }, 'big output: succeeded';
is length(output($id)), 20000, 'stdout kept up to max_output_size';
is $stack->psql('pushjobs', "SELECT truncated FROM pushjobs.job_output"
                            . " WHERE job_id = '$id'"), "t\n",
    'truncated is marked';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';
$stack->stop;
done_testing;
