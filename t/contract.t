# The REST contract of Push Jobs 2.x (reference/pushjobs-2x-contract.md
# §2.1-§2.11), row by row: routes and 405s before anything else, the job
# body validated before authentication, the malformed-request and
# authentication answers, content negotiation, every POST /jobs validation
# message, the exact shapes of the GET documents, the output endpoints,
# node states, _status, and our deliberate changes (API.md §2): invalid
# JSON and duplicate node names are 400s, a job of another org is a 404,
# config/NODE returns no secret and only to the node itself.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use MIME::Base64 qw(encode_base64);
use POSIX qw(strftime);
use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 1);
$stack->start;

my $org = $stack->org;
my $base = "/organizations/$org/pushy";
my $jobs = "$base/jobs";
my $J = $stack->json;

sub error_is {
    my ($res, $status, $error, $name) = @_;
    is $res->{status}, $status, "$name: $status" or diag $res->{content};
    is_deeply scalar(eval { $J->decode($res->{content}) }), { error => $error },
        "$name: error body" or diag $res->{content};
}

# --- §2.1, §2.2: routes, 405 first --------------------------------------

my $known = '0123456789abcdef0123456789abcdef';

my @routes = (
    [ $jobs,                              [qw(GET POST)] ],
    [ "$jobs/$known",                     [qw(GET)] ],
    [ "$jobs/$known/output/node1/stdout", [qw(GET)] ],
    [ "$jobs/$known/output/node1/stderr", [qw(GET)] ],
    [ "$base/node_states",                [qw(GET)] ],
    [ "$base/node_states/node1",          [qw(GET)] ],
    [ "$base/config/node1",               [qw(GET)] ],
    [ "$base/job_status_feed",            [qw(GET)] ],
    [ "$base/job_status_feed/$known",     [qw(GET)] ],
    [ '/pushy/_status',                   [qw(GET)] ],
);

for my $route (@routes) {
    my ($path, $allowed) = @$route;
    my %ok = map { $_ => 1 } @$allowed;
    for my $m (grep { !$ok{$_} } qw(GET POST PUT DELETE)) {
        for my $signed (0, 1) {
            my $res = $stack->request($m, $path, unsigned => !$signed,
                                      ($m =~ /POST|PUT/ ? (body => '{}') : ()));
            my $who = $signed ? 'signed' : 'unsigned';
            is $res->{status}, 405, "$m $path ($who): 405";
            is $res->{content}, '', "  empty body";
            my $allow = $res->{headers}{allow} // '';
            my %got = map { $_ => 1 } split /,\s*/, $allow;
            ok((!grep { !$got{$_} } @$allowed) && !$got{$m},
               "  Allow: $allow");
        }
    }
}

# no other route exists under pushy/; config needs a node name
for my $m (qw(GET PUT POST DELETE)) {
    for my $path ("$base/config", "$base/config/", "$base/nothing",
                  "$jobs/$known/output/node1", "$jobs/$known/output/node1/x")
    {
        my $res = $stack->request($m, $path);
        is $res->{status}, 404, "$m $path: 404";
    }
}

# a trailing slash on a collection is the collection
my $res = $stack->request('GET', "$jobs/");
is $res->{status}, 200, 'GET jobs/ == GET jobs';
$res = $stack->request('GET', "$base/node_states/");
is $res->{status}, 200, 'GET node_states/ == GET node_states';

# --- §2.2: the job body is checked before authentication ------------------

$res = $stack->request('POST', $jobs, unsigned => 1,
                       body => { command => 'true' });
error_is($res, 400, 'at least one node must be supplied',
         'unsigned POST with a bad body');

$res = $stack->request('POST', $jobs, key_file => $stack->user_key('bob'),
                       body => { nodes => ['node1'] });
error_is($res, 400, 'invalid command supplied',
         'POST with a bad body and a bad signature');

$res = $stack->request('POST', $jobs, unsigned => 1,
                       body => { command => 'true', nodes => ['node1'] });
error_is($res, 400, [ "missing required authentication header(s) "
                      . "'X-Ops-UserId', 'X-Ops-Timestamp', 'X-Ops-Sign', "
                      . "'X-Ops-Content-Hash'" ],
         'unsigned POST with a good body');

# --- §2.2: malformed requests ---------------------------------------------

$res = $stack->request('GET', $jobs,
                       headers => { 'X-Ops-Sign' => undef,
                                    'X-Ops-Content-Hash' => undef });
error_is($res, 400, [ "missing required authentication header(s) "
                      . "'X-Ops-Sign', 'X-Ops-Content-Hash'" ],
         'two headers missing');

$res = $stack->request('GET', $jobs, headers => { 'X-Ops-UserId' => '' });
error_is($res, 400, [ "missing required authentication header(s) "
                      . "'X-Ops-UserId'" ], 'an empty header is missing');

$res = $stack->request('GET', $jobs,
                       headers => { 'X-Ops-Timestamp' => 'yesterday' });
error_is($res, 401, [ "bad header(s) 'X-Ops-Timestamp'" ], 'bad timestamp');

my $ts = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime(time + 15 * 60 + 30));
$res = $stack->request('GET', $jobs, timestamp => $ts, user => 'bob');
error_is($res, 401, [ 'Failed to authenticate as bob. Synchronize the '
                      . 'clock on your host.' ], 'clock 15 minutes ahead');

$res = $stack->request('GET', $jobs,
                       headers => { 'X-Ops-Sign' => 'algorithm=md5;version=1.1' });
error_is($res, 400, [ 'Unsupported authentication protocol version' ],
         'unsupported algorithm');

my $big = '{"command":"true","nodes":["node1"],"dir":"'
          . ('x' x 1_000_000) . '"}';
$res = $stack->request('POST', $jobs, body => $big);
error_is($res, 413, 'JSON must be no more than 1000000 bytes.',
         'POST body over 1000000 bytes');

# --- §2.2: authentication ---------------------------------------------------

$res = $stack->request('GET', "/organizations/nosuchorg/pushy/node_states");
error_is($res, 404, [ "organization 'nosuchorg' does not exist." ],
         'unknown org');

$res = $stack->request('GET', "$base/node_states", user => 'nosuchclient',
                       key_file => $stack->user_key('ghost'));
error_is($res, 401, [ "Failed to authenticate as 'nosuchclient'. Ensure "
                      . "that your node_name and client key are correct." ],
         'unknown principal');

$res = $stack->request('GET', $jobs, user => 'dave');
error_is($res, 403, [ "'dave' is not associated with organization '$org'" ],
         'a user of another org');

# clients belong to one org: another org's client is no principal here
$res = $stack->request('GET', $jobs, user => 'othernode');
error_is($res, 401, [ "Failed to authenticate as 'othernode'. Ensure that "
                      . "your node_name and client key are correct." ],
         'a client of another org');

# 404s come after authentication
$res = $stack->request('GET', "$jobs/$known",
                       key_file => $stack->user_key('bob'));
error_is($res, 401, [ "Invalid signature for user or client 'alice'" ],
         'unknown job, bad signature: 401 not 404');

# --- §2.4: POST /jobs validation --------------------------------------------

my $ok = { command => 'true', nodes => ['ghost'] };

my @invalid = (
    [ 'no command', { nodes => ['ghost'] }, 'invalid command supplied' ],
    [ 'command a number', { %$ok, command => 5 }, 'invalid command supplied' ],
    [ 'command null', { %$ok, command => undef }, 'invalid command supplied' ],
    [ 'command a list', { %$ok, command => ['true'] },
      'invalid command supplied' ],
    [ 'no nodes', { command => 'true' }, 'at least one node must be supplied' ],
    [ 'empty nodes', { %$ok, nodes => [] },
      'at least one node must be supplied' ],
    [ 'nodes a string', { %$ok, nodes => 'ghost' },
      'at least one node must be supplied' ],
    [ 'nodes of numbers', { %$ok, nodes => [1] },
      'at least one node must be supplied' ],
    [ 'run_timeout a string', { %$ok, run_timeout => '10' },
      'invalid type supplied for run_timeout (expected a number)' ],
    [ 'run_timeout null', { %$ok, run_timeout => undef },
      'invalid type supplied for run_timeout (expected a number)' ],
    [ 'quorum a string', { %$ok, quorum => '1' },
      'invalid type supplied for quorum (expected a number)' ],
    [ 'quorum a boolean', { %$ok, quorum => JSON::PP::true },
      'invalid type supplied for quorum (expected a number)' ],
    [ 'user a number', { %$ok, user => 5 },
      'an unknown validation error has occurred' ],
    [ 'dir a list', { %$ok, dir => ['/tmp'] },
      'an unknown validation error has occurred' ],
    [ 'env a string', { %$ok, env => 'A=1' },
      'an unknown validation error has occurred' ],
    [ 'env of numbers', { %$ok, env => { A => 1 } },
      'an unknown validation error has occurred' ],
    [ 'file a number', { %$ok, file => 5 },
      'an unknown validation error has occurred' ],
    [ 'file without a prefix', { %$ok, file => 'hello' },
      "invalid file contents (expected 'base64:...' or 'raw:...')" ],
    [ 'file not base64', { %$ok, file => 'base64:!!!not base64!!!' },
      "invalid file contents (couldn't decode base64 string)" ],
    [ 'raw file over 100000 bytes', { %$ok, file => 'raw:' . ('x' x 100_001) },
      'invalid file size (must be <= 100000 bytes)' ],
    [ 'base64 file over 100000 bytes',
      { %$ok, file => 'base64:' . encode_base64('y' x 100_001, '') },
      'invalid file size (must be <= 100000 bytes)' ],
    # fixed: 2.x accepted these, and the job then could not run as asked
    [ 'quorum above the node count', { %$ok, quorum => 5 },
      'invalid quorum supplied (expected an integer from 0 to the number '
      . 'of nodes)' ],
    [ 'run_timeout 0', { %$ok, run_timeout => 0 },
      'invalid run_timeout supplied (expected an integer from 1 to '
      . '31536000)' ],
    [ 'capture_output a string', { %$ok, capture_output => 'yes' },
      'invalid type supplied for capture_output (expected a boolean)' ],
    [ 'capture_output a number', { %$ok, capture_output => 1 },
      'invalid type supplied for capture_output (expected a boolean)' ],
    [ 'an unknown key', { %$ok, timeout => 10 }, 'invalid key supplied' ],
    [ 'duplicate node names', { %$ok, nodes => [qw(ghost node1 ghost)] },
      'duplicate node name supplied' ],
    [ 'env with a duplicate key',
      '{"command":"true","nodes":["ghost"],"env":{"A":"1","A":"2"}}',
      'invalid environment value (duplicate key)' ],
    [ 'unparsable JSON', '{"command":"true","nodes":["ghost"]',
      'invalid JSON' ],
    [ 'not JSON at all', 'command=true', 'invalid JSON' ],
    [ 'a JSON list', '["true"]', 'invalid JSON' ],
);

for my $case (@invalid) {
    my ($name, $body, $error) = @$case;
    $res = $stack->request('POST', $jobs, body => $body);
    error_is($res, 400, $error, "POST /jobs with $name");
}

is $stack->psql('pushjobs', 'SELECT count(*) FROM pushjobs.jobs'), "0\n",
    'no job was created by an invalid body';

my @valid = (
    [ 'an empty command', { %$ok, command => '' } ],
    [ 'quorum 0', { %$ok, quorum => 0 } ],
    [ 'a 40-character user', { %$ok, user => 'u' x 40 } ],
    [ 'a raw file of exactly 100000 bytes',
      { %$ok, file => 'raw:' . ('x' x 100_000) } ],
    [ 'a base64 file of exactly 100000 bytes',
      { %$ok, file => 'base64:' . encode_base64('y' x 100_000, '') } ],
    [ 'every option', { %$ok, user => 'daemon', dir => '/tmp',
                        env => { E1 => 'e1' }, file => 'raw:hello',
                        capture_output => JSON::PP::false, quorum => 1,
                        run_timeout => 30 } ],
);

for my $case (@valid) {
    my ($name, $body) = @$case;
    $res = $stack->request('POST', $jobs, body => $body);
    is $res->{status}, 201, "POST /jobs with $name: 201"
        or diag $res->{content};
}

# 415 for a body that is not JSON by its Content-Type, after auth
$res = $stack->request('POST', $jobs, body => $ok,
                       headers => { 'Content-Type' => 'text/plain' });
is $res->{status}, 415, 'POST /jobs as text/plain: 415';
$res = $stack->request('POST', $jobs, body => $ok, user => 'bob',
                       headers => { 'Content-Type' => 'text/plain' });
is $res->{status}, 403, '  but a non-writer is refused first (403)';

# --- §2.4: 201, Location, uri -----------------------------------------------

$res = $stack->request('POST', $jobs,
                       body => { command => 'echo contract',
                                 nodes => [qw(node1 ghost)], quorum => 1,
                                 capture_output => JSON::PP::true });
is $res->{status}, 201, 'job created: 201';
like $res->{json}{uri}, qr{^https://127\.0\.0\.1:\d+/organizations/$org/pushy/jobs/[0-9a-f]{32}$},
    '  uri of the job';
is $res->{headers}{location}, $res->{json}{uri}, '  Location is the uri';
is_deeply [ keys %{ $res->{json} } ], ['uri'], '  body is {"uri": ...}';
my $echo = PushJobs::Stack::job_id_of($res);

$res = $stack->request('POST', $jobs, body => $ok,
                       headers => { 'X-Forwarded-Proto' => 'http' });
like $res->{json}{uri}, qr{^http://}, 'uri uses X-Forwarded-Proto';

# --- §2.6: GET jobs/ID ------------------------------------------------------

my $rfc1123 = qr/^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$/;

my $job = $stack->wait_job($echo, 60);
is $job->{status}, 'complete', 'echo job complete';
is_deeply $job->{nodes}, { succeeded => ['node1'], unavailable => ['ghost'] },
    'nodes grouped by status';
is_deeply [ sort keys %$job ],
    [ sort qw(id command status run_timeout created_at updated_at nodes
              capture_output) ], 'exactly the contract keys (no quorum)';
is $job->{id}, $echo, 'id';
is $job->{command}, 'echo contract', 'command';
is $job->{run_timeout}, 3600, 'default run_timeout 3600';
is $job->{capture_output}, JSON::PP::true, 'capture_output true';
like $job->{$_}, $rfc1123, "$_ is RFC 1123" for qw(created_at updated_at);

my %mon = (Jan => 0, Feb => 1, Mar => 2, Apr => 3, May => 4, Jun => 5,
           Jul => 6, Aug => 7, Sep => 8, Oct => 9, Nov => 10, Dec => 11);
sub http_time {
    my ($d, $m, $y, $H, $M, $S) = $_[0] =~ /, (\d+) (\w+) (\d+) (\d+):(\d+):(\d+)/;
    require Time::Local;
    return Time::Local::timegm($S, $M, $H, $d, $mon{$m}, $y);
}
ok abs(http_time($job->{created_at}) - time) < 120, 'created_at is UTC now';
ok http_time($job->{updated_at}) >= http_time($job->{created_at}),
    'updated_at >= created_at';

my ($minimal) = $stack->start_job({ command => 'true', nodes => ['ghost'] });
$job = $stack->wait_job($minimal, 30);
is_deeply [ sort keys %$job ],
    [ sort qw(id command status run_timeout created_at updated_at nodes) ],
    'a job without options: no option keys';
is_deeply $job->{nodes}, { unavailable => ['ghost'] }, '  nodes';
is $job->{status}, 'quorum_failed', '  quorum_failed';

my $full = $stack->start_job({ command => 'true', nodes => ['ghost'],
                               user => 'daemon', dir => '/tmp',
                               env => { E1 => 'e1' }, file => 'raw:hello',
                               capture_output => JSON::PP::true,
                               run_timeout => 30 });
$job = $stack->wait_job($full, 30);
is_deeply { map { $_ => $job->{$_} }
                qw(user dir env capture_output file_specified run_timeout) },
    { user => 'daemon', dir => '/tmp', env => { E1 => 'e1' },
      capture_output => JSON::PP::true, file_specified => JSON::PP::true,
      run_timeout => 30 }, 'option fields when set';
ok !exists $job->{file}, '  no file without include_file';

$res = $stack->request('GET', "$jobs/$full?include_file=true");
is $res->{json}{file}, 'raw:hello', 'include_file=true: file';
ok !exists $res->{json}{file_specified}, '  replaces file_specified';
$res = $stack->request('GET', "$jobs/$full?include_file=1");
ok !exists $res->{json}{file} && $res->{json}{file_specified},
    'include_file=1 is not true';

# knife always sends env {} and capture_output false
my $knife = $stack->start_job({ command => 'true', nodes => ['ghost'],
                                quorum => 1, env => {},
                                capture_output => JSON::PP::false });
$job = $stack->job($knife);
is_deeply $job->{env}, {}, 'env {} is shown as set (as knife-push sees it)';
ok !exists $job->{capture_output}, 'capture_output false is not shown';

$res = $stack->request('GET', "$jobs/$known");
is $res->{status}, 404, 'unknown job: 404';
$res = $stack->request('GET', "$jobs/not-a-job-id");
is $res->{status}, 404, 'malformed job id: 404';

# a job of another org is not found there (API.md §2)
$res = $stack->request('GET', "/organizations/other/pushy/jobs/$echo",
                       user => 'dave');
is $res->{status}, 404, "a job of $org read in org other: 404";
$res = $stack->request('GET',
    "/organizations/other/pushy/jobs/$echo/output/node1/stdout",
    user => 'dave', headers => { Accept => 'application/octet-stream' });
is $res->{status}, 404, '  and its output too';
$res = $stack->request('GET', '/organizations/other/pushy/jobs',
                       user => 'dave');
is_deeply $res->{json}, [], "  and org other's job list is empty";

# --- §2.5: GET jobs ---------------------------------------------------------

$res = $stack->request('GET', $jobs);
is $res->{status}, 200, 'GET jobs: 200';
is ref $res->{json}, 'ARRAY', '  a JSON array';
my %list = map { $_->{id} => $_ } @{ $res->{json} };
is scalar(keys %list), @valid + 5, '  every job of the org';
is_deeply [ sort keys %{ $list{$minimal} } ],
    [ sort qw(id command status run_timeout created_at updated_at) ],
    '  summary of a job without options: no nodes, no quorum';
is_deeply [ sort keys %{ $list{$full} } ],
    [ sort qw(id command status run_timeout created_at updated_at user dir env
              capture_output file_specified) ],
    '  summary of a job with options: no file contents';
like $list{$full}{created_at}, $rfc1123, '  RFC 1123 dates';

# optional filters (API.md §2), same array shape
my @all = @{ $res->{json} };
$res = $stack->request('GET', "$jobs?status=complete");
is $res->{status}, 200, 'GET jobs?status=complete: 200';
is_deeply $res->{json}, [ grep { $_->{status} eq 'complete' } @all ],
    '  the complete jobs';
$res = $stack->request('GET', "$jobs?limit=2");
is_deeply $res->{json}, [ @all[-2, -1] ], 'GET jobs?limit=2: the 2 newest';
$res = $stack->request('GET', "$jobs?status=quorum_failed&limit=1");
is_deeply $res->{json}, [ (grep { $_->{status} eq 'quorum_failed' } @all)[-1] ],
    'status and limit together';
for my $q ('status=bogus', 'limit=0', 'limit=x', 'limit=-1') {
    $res = $stack->request('GET', "$jobs?$q");
    is $res->{status}, 400, "GET jobs?$q: 400";
}

# --- §2.7: output -----------------------------------------------------------

my $octet = { Accept => 'application/octet-stream' };
$res = $stack->request('GET', "$jobs/$echo/output/node1/stdout",
                       headers => $octet);
is $res->{status}, 200, 'stdout: 200';
is $res->{content}, "contract\n", '  the bytes printed';
like $res->{headers}{'content-type'}, qr{^application/octet-stream},
    '  as application/octet-stream';
$res = $stack->request('GET', "$jobs/$echo/output/node1/stderr",
                       headers => $octet);
is $res->{status}, 200, 'stderr: 200';
is $res->{content}, '', '  empty';

$res = $stack->request('GET', "$jobs/$echo/output/node1/stdout");
is $res->{status}, 406, 'output with Accept: application/json: 406';

$res = $stack->request('GET', "$jobs/$echo/output/ghost/stdout",
                       headers => $octet);
is $res->{status}, 404, 'output of a node that never ran: 404';
$res = $stack->request('GET', "$jobs/$echo/output/nosuchnode/stdout",
                       headers => $octet);
is $res->{status}, 404, 'output of a node not in the job: 404';
$res = $stack->request('GET', "$jobs/$known/output/node1/stdout",
                       headers => $octet);
is $res->{status}, 404, 'output of an unknown job: 404';

my $nocap = $stack->start_job({ command => 'echo x', nodes => ['node1'] });
$job = $stack->wait_job($nocap, 60);
is $job->{status}, 'complete', 'job without capture complete';
$res = $stack->request('GET', "$jobs/$nocap/output/node1/stdout",
                       headers => $octet);
is $res->{status}, 404, 'output not captured: 404';

# --- §2.8, §2.9: node states ------------------------------------------------

$res = $stack->request('GET', "$base/node_states");
is $res->{status}, 200, 'node_states: 200';
is_deeply $res->{json}, [ { node_name => 'node1', availability => 'available' } ],
    '  the connected node, available; ghost absent';

$res = $stack->request('GET', "$base/node_states/node1");
is_deeply $res->{json}, { node_name => 'node1', status => 'online',
                          availability => 'available' }, 'node_states/node1';
for my $n (qw(ghost nosuchnode)) {
    $res = $stack->request('GET', "$base/node_states/$n");
    is $res->{status}, 200, "node_states/$n: 200";
    is_deeply $res->{json}, { node_name => $n, status => 'offline',
                              availability => 'unavailable' }, '  offline';
}

# --- §2.10, API.md §3: config/NODE ------------------------------------------

$res = $stack->request('GET', "$base/config/node1", user => 'node1');
is $res->{status}, 200, 'config/node1 as node1: 200' or diag $res->{content};
my $c = $res->{json};
is_deeply [ sort keys %$c ],
    [ sort qw(type host node organization lifetime push_jobs channel) ],
    '  config keys: no ZeroMQ fields, no secret';
is $c->{type}, 'config', '  type';
is $c->{host}, 'fe1', '  host is pushjobs_server_name';
is $c->{node}, 'node1', '  node';
is $c->{organization}, $org, '  organization';
is $c->{lifetime}, 3600, '  lifetime';
is_deeply [ keys %{ $c->{push_jobs} } ], ['heartbeat'], '  push_jobs';
is_deeply [ keys %{ $c->{push_jobs}{heartbeat} } ], ['interval'],
    '  push_jobs.heartbeat';
like $res->{content}, qr/"interval":10\.0[,}]/, '  interval a float, 10.0';
is $c->{channel}{websocket},
    'wss://127.0.0.1:' . $stack->port . "/organizations/$org/pushy/agent",
    '  channel.websocket';
unlike $res->{content}, qr/key|curve|session|_addr/i, '  nothing secret';

$res = $stack->request('GET', "$base/config/node1?ccpk=" . ('x' x 40),
                       user => 'node1');
is $res->{status}, 200, '  ccpk is ignored';

$res = $stack->request('GET', "$base/config/node1", user => 'ghost');
error_is($res, 403, [ 'Client and node name must match' ],
         'config of another node');
for my $u (qw(alice bob)) {
    $res = $stack->request('GET', "$base/config/node1", user => $u);
    error_is($res, 403, [ 'Client and node name must match' ],
             "config/node1 as user $u");
}
$res = $stack->request('GET', "$base/config/node1", user => 'othernode');
is $res->{status}, 401, 'config as a client of another org: 401';
$res = $stack->request('GET', "$base/config/node1",
                       key_file => $stack->user_key('ghost'), user => 'node1');
is $res->{status}, 401, 'config with a bad signature: 401';

# --- §2.11: _status ---------------------------------------------------------

$res = $stack->request('GET', '/pushy/_status', unsigned => 1);
is $res->{status}, 200, '_status unauthenticated: 200';
is $res->{json}{status}, "it's alive", '  status';
like $res->{json}{incarnation_id} // '',
    qr/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    '  incarnation_id a UUID v4';
is $res->{json}{node_fsm_count}, 1, '  node_fsm_count';
is ref $res->{json}{job_processes}, 'ARRAY', '  job_processes';
my $inc = $res->{json}{incarnation_id};
$res = $stack->request('GET', '/pushy/_status', user => 'carol');
is $res->{status}, 200, '_status for anyone: 200';
is $res->{json}{incarnation_id}, $inc, '  same incarnation_id';

# every response carries X-Ops-Server-API-Version (knife-push needs it)
for my $r ([ 'GET', $jobs ], [ 'PUT', $jobs ], [ 'GET', "$jobs/$known" ],
           [ 'GET', "$base/nothing" ])
{
    $res = $stack->request(@$r);
    ok $res->{headers}{'x-ops-server-api-version'},
        "@$r: X-Ops-Server-API-Version";
}

# --- §2.2: the Chef server unreachable for a key not cached: 502 ----------

$stack->stop_proc('chef', 'TERM', 5);
$res = $stack->request('GET', $jobs, user => 'nosuchuser',
                       key_file => $stack->user_key('alice'));
is $res->{status}, 502, 'Chef server down: 502';
like $res->{json}{error}[0] // '',
    qr/^Failed to connect to erchef to get key: /, '  the 2.x message';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
