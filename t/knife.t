# knife-push's request sequences (contract §8, observed from knife-push 2.0.1),
# replayed as knife sends them: Chef signing 1.1, X-Ops-Server-API-Version 2,
# X-Chef-Version, Accept: application/json, and exactly knife's bodies.
# Every response knife parses is checked for the keys and types it uses.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use POSIX qw(ceil);
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 3, workers => 2,
    whitelist => {
        'chef-client' => 'true', 'true' => 'true', 'false' => 'false',
        'env' => 'env', 'pwd' => 'pwd', 'whoami' => 'whoami',
    },
    client_rb_extra => 'allowed_users ["root"]');
$stack->start;

my $org = $stack->org;
my $base = "/organizations/$org/pushy";
my $url = $stack->url;
my $plain = JSON::PP->new;    # knife's key order, not sorted
my $n = 0;

# One request as knife sends it; PATH may be the full uri a POST returned.
sub knife {
    my ($method, $path, %a) = @_;
    $path =~ s{^https://[^/]+}{};
    my $res = $stack->request($method, $path,
        (defined $a{body} ? (body => $a{body}) : ()),
        version => '1.1', api_version => '2', user => 'alice',
        headers => {
            Accept => $a{accept} // 'application/json',
            'X-Chef-Version' => '16.12.3',
            'X-Remote-Request-Id' => sprintf('00000000-0000-4000-8000-%012d',
                                             ++$n),
        });
    ok defined $res->{headers}{'x-ops-server-api-version'},
        "  $method $path: X-Ops-Server-API-Version in the response"
        unless $a{quiet};
    return $res;
}

# knife's body: command, nodes, quorum, capture_output, env, then the
# options that were given, in this order
sub job_body {
    my (%o) = @_;
    my @pairs = (command => $o{command}, nodes => $o{nodes},
                 quorum => $o{quorum},
                 capture_output => $o{capture} ? JSON::PP::true
                                               : JSON::PP::false,
                 env => $o{env} // {});
    push @pairs, file => 'raw:' . $o{file} if defined $o{file};
    push @pairs, dir => $o{dir} if defined $o{dir};
    push @pairs, user => $o{user} if defined $o{user};
    push @pairs, run_timeout => $o{timeout} + 0 if defined $o{timeout};
    my @kv;
    while (my ($k, $v) = splice @pairs, 0, 2) {
        push @kv, $plain->encode($k) . ':' . $plain->encode($v);
    }
    return '{' . join(',', @kv) . '}';
}

# -q N or P%, computed client-side as knife does
sub quorum {
    my ($q, $count) = @_;
    return $q + 0 if $q =~ /^\d+$/;
    return ceil($1 / 100 * $count) if $q =~ /^(\d+)%$/;
    die "Invalid Format for quorum: $q";
}

my $RFC1123 = qr/^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$/;

sub is_int { defined $_[0] && !ref $_[0] && $_[0] =~ /^-?\d+$/
             && B::svref_2object(\$_[0])->FLAGS & B::SVf_IOK() }
use B ();

# The job document knife reads while polling and prints at the end.
sub check_job {
    my ($job, $what) = @_;
    my @bad;
    push @bad, 'id' unless ($job->{id} // '') =~ /^[0-9a-f]{32}$/;
    push @bad, 'command' unless defined $job->{command} && !ref $job->{command};
    push @bad, 'status' unless ($job->{status} // '')
        =~ /^(new|voting|running|complete|quorum_failed|timed_out|crashed|aborted)$/;
    push @bad, 'run_timeout' unless is_int($job->{run_timeout});
    push @bad, 'created_at' unless ($job->{created_at} // '') =~ $RFC1123;
    push @bad, 'updated_at' unless ($job->{updated_at} // '') =~ $RFC1123;
    push @bad, 'nodes' unless ref $job->{nodes} eq 'HASH'
        && !grep { ref $_ ne 'ARRAY' } values %{ $job->{nodes} };
    ok !@bad, "  $what: keys and types knife uses"
        or diag explain { bad => \@bad, job => $job };
}

# knife job start: POST, then (unless --nowait) GET the uri until the job
# leaves new/voting/running; returns (job, knife's exit code, id).
sub job_start {
    my ($what, %o) = @_;
    $o{quorum} = quorum($o{q} // '100%', scalar @{ $o{nodes} });
    my $body = job_body(%o);
    my $res = knife('POST', "$base/jobs", body => $body);
    is $res->{status}, 201, "knife job start $what: 201" or diag $res->{content};
    my $uri = $res->{json}{uri} // '';
    like $uri, qr{^\Q$url\E$base/jobs/[0-9a-f]{32}$},
        '  uri: https, this host, the job';
    is $res->{headers}{location}, $uri, '  Location: the uri';
    my $id = PushJobs::Stack::job_id_of($res);
    return (undef, undef, $id) if $o{nowait};

    my $job;
    PushJobs::Stack::wait_for(60, sub {
        my $r = knife('GET', $uri, quiet => 1);
        return 0 unless $r->{status} == 200
                        && $r->{headers}{'x-ops-server-api-version'};
        $job = $r->{json};
        return ($job->{status} // 'new') !~ /^(new|voting|running)$/;
    }, 0.2);
    check_job($job, "GET uri of $what");
    my $ok = $job->{status} eq 'complete'
             && !grep { !/^(succeeded|nacked|unavailable)$/ }
                     keys %{ $job->{nodes} };
    return ($job, $ok ? 0 : 1, $id);
}

sub output {
    my ($id, $node, $channel) = @_;
    my $res = knife('GET', "$base/jobs/$id/output/$node/" . ($channel // 'stdout'),
                    accept => 'application/octet-stream');
    is $res->{status}, 200, "knife job output $node " . ($channel // 'stdout')
        . ': 200';
    like $res->{headers}{'content-type'} // '', qr{^application/octet-stream},
        '  application/octet-stream';
    return $res->{content};
}

my @ids;

# plain
my ($job, $exit, $id) = job_start('true node1 node2', command => 'true',
                                  nodes => [qw(node1 node2)]);
push @ids, $id;
is $job->{status}, 'complete', '  complete';
is_deeply $job->{nodes}, { succeeded => [qw(node1 node2)] }, '  succeeded';
is_deeply $job->{env}, {}, '  env {} (knife always sends it)';
is $exit, 0, '  knife would exit 0';

# --nowait: only the POST
(undef, undef, $id) = job_start('--nowait', command => 'chef-client',
                                nodes => ['node3'], nowait => 1);
push @ids, $id;
is $stack->wait_job($id, 60)->{status}, 'complete', '  the job completes';

# --capture
($job, $exit, $id) = job_start('--capture', command => 'echo captured',
                               nodes => ['node1'], capture => 1);
push @ids, $id;
is $job->{capture_output}, JSON::PP::true, '  capture_output true';
is output($id, 'node1'), "captured\n", '  stdout';
is output($id, 'node1', 'stderr'), '', '  stderr empty';

# --with-env
($job, $exit, $id) = job_start('--with-env', command => 'env',
                               nodes => ['node2'], capture => 1,
                               env => { FOO => 'bar baz' });
push @ids, $id;
is_deeply $job->{env}, { FOO => 'bar baz' }, '  env in the job';
my $env = output($id, 'node2');
like $env, qr/^(CHEF_PUSH_ENV_)?FOO=bar baz$/m, '  the env reached the command';
{
    local $TODO = 'the agent renames every env key CHEF_PUSH_ENV_KEY; 2.x '
        . 'does so only when allowed_overwritable_env_vars is set (§4.5)';
    like $env, qr/^FOO=bar baz$/m, '  the command saw FOO';
}
like $env, qr/^CHEF_PUSH_NODE_NAME=node2$/m, '  and CHEF_PUSH_NODE_NAME';
like $env, qr/^CHEF_PUSH_JOB_ID=$id$/m, '  and CHEF_PUSH_JOB_ID';

# --in-dir
($job, $exit, $id) = job_start('--in-dir /tmp', command => 'pwd',
                               nodes => ['node1'], capture => 1,
                               dir => '/tmp');
push @ids, $id;
is $job->{dir}, '/tmp', '  dir in the job';
is output($id, 'node1'), "/tmp\n", '  ran in /tmp';

# --as-user (the agents run as root)
my $me = getpwuid($>);
($job, $exit, $id) = job_start("--as-user $me", command => 'whoami',
                               nodes => ['node1'], capture => 1,
                               user => $me);
push @ids, $id;
is $job->{user}, $me, '  user in the job';
is $job->{status}, 'complete', '  complete' or diag explain $job;
is output($id, 'node1'), "$me\n", "  ran as $me";

# --file: knife sends raw:CONTENT
($job, $exit, $id) = job_start('--file', command => 'env', nodes => ['node3'],
                               capture => 1, file => "hello file\n");
push @ids, $id;
is $job->{file_specified}, JSON::PP::true, '  file_specified';
like output($id, 'node3'), qr/^CHEF_PUSH_JOB_FILE=\S+$/m,
    '  the command got CHEF_PUSH_JOB_FILE';
my $res = knife('GET', "$base/jobs/$id?include_file=true");
is $res->{json}{file}, "raw:hello file\n", '  ?include_file=true: raw: file';

# the API's other file encoding, base64: (not what knife sends)
$id = $stack->start_job({ command => 'true', nodes => ['node3'],
                          file => 'base64:' . encode_base64("\0\1bin", '') });
push @ids, $id;
is $stack->wait_job($id, 60)->{status}, 'complete', 'a base64: file job';
$res = knife('GET', "$base/jobs/$id?include_file=true");
is $res->{json}{file}, 'base64:' . encode_base64("\0\1bin", ''),
    '  kept as posted';

# --timeout
($job, $exit, $id) = job_start('--timeout 30', command => 'true',
                               nodes => ['node2'], timeout => 30);
push @ids, $id;
is $job->{run_timeout}, 30, '  run_timeout 30';

# quorum as a count: -q 1 of node1 and ghost (no agent)
($job, $exit, $id) = job_start('-q 1', command => 'true',
                               nodes => [qw(node1 ghost)], q => '1');
push @ids, $id;
is $job->{status}, 'complete', '  complete with 1 of 2';
is_deeply $job->{nodes}, { succeeded => ['node1'], unavailable => ['ghost'] },
    '  ghost unavailable';
is $exit, 0, '  knife would exit 0';

# quorum as a percentage: 50% of 3 is 2
is quorum('50%', 3), 2, 'knife computes 50% of 3 nodes as 2';
($job, $exit, $id) = job_start('-q 50%', command => 'true',
                               nodes => [qw(node1 node2 ghost)], q => '50%');
push @ids, $id;
is $job->{status}, 'complete', '  complete with 2 of 3';

# 100% (the default) of node1 and ghost fails
($job, $exit, $id) = job_start('-q 100%', command => 'true',
                               nodes => [qw(node1 ghost)]);
push @ids, $id;
is $job->{status}, 'quorum_failed', '  quorum_failed';
is $exit, 1, '  knife would exit 1';

# knife job list
$res = knife('GET', "$base/jobs");
is $res->{status}, 200, 'knife job list: 200';
is ref $res->{json}, 'ARRAY', '  an array';
my %listed = map { $_->{id} => $_ } @{ $res->{json} // [] };
is_deeply [ grep { !$listed{$_} } @ids ], [], '  every job listed';
my @bad = grep { !($_->{id} =~ /^[0-9a-f]{32}$/ && defined $_->{command}
                   && $_->{status} && is_int($_->{run_timeout})
                   && $_->{created_at} =~ $RFC1123
                   && $_->{updated_at} =~ $RFC1123) } @{ $res->{json} };
is_deeply \@bad, [], '  each with id, command, status, run_timeout, times';

# knife job status
$res = knife('GET', "$base/jobs/$ids[0]");
is $res->{status}, 200, 'knife job status: 200';
check_job($res->{json}, 'job status');

# knife node status: all nodes
$res = knife('GET', "$base/node_states");
is $res->{status}, 200, 'knife node status: 200';
is_deeply [ sort map { "$_->{node_name}\t$_->{availability}" }
                 @{ $res->{json} } ],
    [ "node1\tavailable", "node2\tavailable", "node3\tavailable" ],
    '  name and availability of each node';

# knife node status NODE
$res = knife('GET', "$base/node_states/node2");
is_deeply $res->{json}, { node_name => 'node2', status => 'online',
                          availability => 'available' },
    'knife node status node2';
$res = knife('GET', "$base/node_states/ghost");
is_deeply $res->{json}, { node_name => 'ghost', status => 'offline',
                          availability => 'unavailable' },
    'knife node status ghost: offline';

# knife node status role:web: a Chef search through the same nginx (the
# query escaped by knife-push, then again by Chef's search client), then
# node_states/NODE for each hit
# (Chef's client offers API version 2; on a 406 naming max_version it
# retries with that version, as Chef::HTTP::APIVersions does)
my $search = "/organizations/$org/search/node?q=role%253Aweb&start=0&rows=1000";
$res = knife('GET', $search, quiet => 1);
if ($res->{status} == 406 && defined $res->{json}{max_version}) {
    $res = $stack->request('GET', $search, version => '1.1',
        api_version => $res->{json}{max_version},
        headers => { 'X-Chef-Version' => '16.12.3' });
}
is $res->{status}, 200, 'knife node status role:web: search/node via nginx';
my @hits = sort map { $_->{name} } @{ $res->{json}{rows} // [] };
is_deeply \@hits, [qw(node1 node3)], '  hits node1 and node3';
for my $node (@hits) {
    $res = knife('GET', "$base/node_states/$node");
    is "$res->{json}{node_name}\t$res->{json}{availability}",
        "$node\tavailable", "  $node\tavailable";
}

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
