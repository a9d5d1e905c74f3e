# Hostile input: JSON built to exhaust a parser (deep nesting, too many
# values), strings PostgreSQL cannot store (overlong UTF-8, lone
# surrogates, \u0000), and fields out of range, on every channel that reads
# JSON: POST jobs and abort (before the signature), agent/poll, a websocket
# message, and ids and names in paths and headers.  Each gets the contract's
# clear answer (400 or close 1007), never a 500 or a dead worker; valid
# edge cases still pass.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use PushJobs::Stack;
use PushJobs::WS;

my $json = PushJobs::Stack::json();
my $utf8 = JSON::PP->new->utf8->canonical;

my $stack = PushJobs::Stack->new(agents => 1);
$stack->start;

my $org = $stack->org;
my $base = "/organizations/$org/pushy";
my $jobs = "$base/jobs";
my $poll = "$base/agent/poll";
my $known = '0123456789abcdef0123456789abcdef';

sub master { $stack->{procs}{'nginx:fe1'} }

sub workers {
    my @w;
    for my $st (glob '/proc/[0-9]*/stat') {
        open my $fh, '<', $st or next;
        my $l = <$fh> // next;
        my ($pid, $ppid) = $l =~ /^(\d+) \(.*\) \S+ (\d+)/ or next;
        push @w, $pid if $ppid == master();
    }
    return join ' ', sort { $a <=> $b } @w;
}

sub error_is {
    my ($res, $status, $error, $what) = @_;
    is $res->{status}, $status, "$what: $status"
        or diag "$res->{status} $res->{content}";
    is_deeply $res->{json}, { error => $error }, "  $what: error body"
        if defined $error;
}

my $workers = workers();
like $workers, qr/^\d+ \d+/, "nginx runs 2 or more workers ($workers)";

# --- 300,000 nested arrays (600 KB, under the 1 MB cap) --------------------

my $deep = ('[' x 300_000) . (']' x 300_000);

# unsigned, on a new connection each time: both workers see it
for my $i (1 .. 3) {
    my $res = $stack->request('POST', $jobs, body => $deep, unsigned => 1);
    error_is($res, 400, 'invalid JSON',
             "300,000 nested [ on unsigned POST jobs ($i)");
    delete $stack->{http};
}

my $res = $stack->request('POST', "$jobs/$known/abort", body => $deep,
                          unsigned => 1);
error_is($res, 400, 'invalid JSON', '300,000 nested [ on unsigned abort');

# a nested object, too: {"a":{"a":...}}
$res = $stack->request('POST', $jobs, unsigned => 1,
                       body => ('{"a":' x 100_000) . '1' . ('}' x 100_000));
error_is($res, 400, 'invalid JSON', '100,000 nested objects on POST jobs');

# signed by a node, on agent/poll
$res = $stack->request('POST', $poll, body => $deep, user => 'ghost',
                       key_file => $stack->user_key('ghost'),
                       version => '1.3');
error_is($res, 400, [ 'the body must be a JSON array of messages' ],
         '300,000 nested [ on signed agent/poll');

# in a websocket message, once the channel is open: close 1007
my ($ws, $status) = PushJobs::WS->connect($stack, 'ghost');
is $status, 101, 'websocket of ghost open';
$ws->send_text('{"type":"hello","v":1,"agent":"hostile.t","jobs":[]}');
like $ws->read_text(10) // '', qr/"type":"welcome"/, '  welcomed';
$ws->send_text($deep);
is $ws->read_close(10), 1007,
   '300,000 nested [ in a websocket message: close 1007';
$ws->close;

ok PushJobs::Stack::wait_for(10, sub {
    $stack->error_log =~ /JSON refused at byte \d+ of \d+: nested too deep/ }),
   'the refusal is logged with its reason';

# --- too many values --------------------------------------------------------

$res = $stack->request('POST', $jobs, unsigned => 1,
    body => '{"command":"true","nodes":[' . join(',', ('"a"') x 200_001)
            . ']}');
error_is($res, 400, 'invalid JSON', 'a job body of 200,001 values');

$res = $stack->request('POST', $jobs, unsigned => 1,
    body => '[' . join(',', (0) x 250_000) . ']');
error_is($res, 400, 'invalid JSON', 'an array of 250,000 numbers');

($ws, $status) = PushJobs::WS->connect($stack, 'ghost');
$ws->send_text('{"type":"hello","v":1,"agent":"hostile.t","jobs":[]}');
$ws->read_text(10);
$ws->send_text('{"type":"hello","v":1,"jobs":[' . join(',', (0) x 70_000)
               . ']}');
is $ws->read_close(10), 1007, 'an agent message of 70,000 values: close 1007';
$ws->close;

# --- strings PostgreSQL cannot hold: 400, not 500 ---------------------------

my @strings = (
    [ 'overlong UTF-8 (C0 AE) in a node name',
      qq({"command":"true","nodes":["\xC0\xAE"]}) ],
    [ 'a UTF-8-encoded surrogate (ED A0 80) in the command',
      qq({"command":"\xED\xA0\x80","nodes":["node1"]}) ],
    [ 'a code point above U+10FFFF in dir',
      qq({"command":"true","nodes":["node1"],"dir":"\xF4\x90\x80\x80"}) ],
    [ 'a truncated sequence in user',
      qq({"command":"true","nodes":["node1"],"user":"\xE2\x82"}) ],
    [ 'a raw NUL byte in the command',
      qq({"command":"a\x00b","nodes":["node1"]}) ],
);

for my $case (@strings) {
    my ($what, $body) = @$case;
    $res = $stack->request('POST', $jobs, body => $body, unsigned => 1);
    error_is($res, 400, 'invalid JSON', $what);
}

# ASCII bodies can be signed: these would reach PostgreSQL if not refused
my @escapes = (
    [ 'a lone high surrogate \ud800 in the command',
      '{"command":"\ud800","nodes":["node1"]}' ],
    [ 'a lone low surrogate \udc00 in an env value',
      '{"command":"true","nodes":["node1"],"env":{"A":"x\udc00"}}' ],
    [ 'a high surrogate without its low one in an env key',
      '{"command":"true","nodes":["node1"],"env":{"\ud83dA":"x"}}' ],
    [ '\u0000 in the command',
      '{"command":"a\u0000","nodes":["node1"]}' ],
);

for my $case (@escapes) {
    my ($what, $body) = @$case;
    $res = $stack->request('POST', $jobs, body => $body);
    error_is($res, 400, 'invalid JSON', $what);
}

$res = $stack->request('POST', "$jobs/$known/abort",
                       body => '{"nodes":["node1\ud800"]}');
error_is($res, 400, 'invalid JSON', 'a lone surrogate in the abort body');

# --- fields out of range ----------------------------------------------------

my $ok = { command => 'true', nodes => [qw(node1 ghost)] };
my $bad_quorum = 'invalid quorum supplied (expected an integer from 0 to '
                 . 'the number of nodes)';
my $bad_timeout = 'invalid run_timeout supplied (expected an integer from 1 '
                  . 'to 31536000)';
my $bad_name = 'invalid node name supplied';

my @invalid = (
    [ 'quorum -1', { %$ok, quorum => -1 }, $bad_quorum ],
    [ 'quorum above the node count', { %$ok, quorum => 3 }, $bad_quorum ],
    [ 'quorum 1.5', '{"command":"true","nodes":["node1","ghost"],'
                    . '"quorum":1.5}', $bad_quorum ],
    [ 'quorum 1e0', '{"command":"true","nodes":["node1"],"quorum":1e0}',
      $bad_quorum ],
    [ 'quorum 2^63', '{"command":"true","nodes":["node1"],'
                     . '"quorum":9223372036854775808}', $bad_quorum ],
    [ 'run_timeout -5', { %$ok, run_timeout => -5 }, $bad_timeout ],
    [ 'run_timeout 0', { %$ok, run_timeout => 0 }, $bad_timeout ],
    [ 'run_timeout over a year', { %$ok, run_timeout => 31_536_001 },
      $bad_timeout ],
    [ 'run_timeout 1e999', '{"command":"true","nodes":["node1"],'
                           . '"run_timeout":1e999}', $bad_timeout ],
    [ 'node name ../../etc', { %$ok, nodes => ['../../etc'] }, $bad_name ],
    [ 'node name a/b', { %$ok, nodes => ['a/b'] }, $bad_name ],
    [ 'an empty node name', { %$ok, nodes => ['node1', ''] }, $bad_name ],
    [ 'a node name of 256 characters', { %$ok, nodes => ['n' x 256] },
      $bad_name ],
    [ 'a node name with a space', { %$ok, nodes => ['node 1'] }, $bad_name ],
    [ 'a non-ASCII node name', { %$ok, nodes => ["n\x{e9}ud"] }, $bad_name ],
);

for my $case (@invalid) {
    my ($what, $body, $error) = @$case;
    $body = $utf8->encode($body) if ref $body;
    $res = $stack->request('POST', $jobs, body => $body);
    error_is($res, 400, $error, "POST jobs with $what");
}

$res = $stack->request('POST', "$jobs/$known/abort",
                       body => { nodes => ['../../etc'] });
error_is($res, 400, $bad_name, 'abort naming ../../etc');

is $stack->psql('pushjobs', 'SELECT count(*) FROM pushjobs.jobs'), "0\n",
    'no job was created by any of them';

# --- ids and names in paths and headers -------------------------------------

$res = $stack->request('GET', "$base/node_states/%C0%AE");
error_is($res, 400, $bad_name, 'GET node_states/ of an overlong sequence');

$res = $stack->request('GET', "$base/node_states/a%00b");
isnt $res->{status}, 500, 'GET node_states/ with %00: not 500'
    or diag $res->{content};

$res = $stack->request('GET', "$jobs/$known/output/%E2%82/stdout",
                       headers => { Accept => 'application/octet-stream' });
error_is($res, 400, $bad_name, 'GET output/ of a truncated sequence');

for my $id ('%FF' x 32, 'g' x 32, uc $known, 'x') {
    $res = $stack->request('GET', "$jobs/$id");
    error_is($res, 404, [ 'not found' ], "GET jobs/$id");
}

$res = $stack->request('GET', "$jobs?status=%C0%AE&limit=99999999999");
error_is($res, 400, 'invalid status supplied', 'GET jobs?status= overlong');

$res = $stack->request('GET', "$jobs?limit=99999999999");
error_is($res, 400, 'invalid limit supplied', 'GET jobs?limit= too large');

# --- valid edge cases still pass ---------------------------------------------

# nodes without an agent: these jobs end at once and leave node1 free
$ok = { command => 'true', nodes => [qw(ghost othernode)] };

my @valid = (
    [ 'quorum 0', { %$ok, quorum => 0 } ],
    [ 'quorum = the node count', { %$ok, quorum => 2 } ],
    [ 'run_timeout 1', { %$ok, run_timeout => 1 } ],
    [ 'run_timeout of a year', { %$ok, run_timeout => 31_536_000 } ],
    [ 'non-ASCII UTF-8 in env and dir',
      { %$ok, env => { CAFE => "caf\x{e9} \x{20ac} \x{1f600}" },
        dir => "/srv/\x{65e5}\x{672c}" } ],
    [ 'a surrogate pair \ud83d\ude00 in the command',
      '{"command":"echo \ud83d\ude00","nodes":["ghost"]}' ],
    [ "node names with ., _, : and -",
      { %$ok, nodes => ['ghost', 'a.b_c:d-E', 'n' x 255] } ],
);

for my $case (@valid) {
    my ($what, $body) = @$case;
    $body = $utf8->encode($body) if ref $body;
    $res = $stack->request('POST', $jobs, body => $body);
    is $res->{status}, 201, "POST jobs with $what: 201"
        or diag $res->{content};
}

# the pair reached node1 as one character (the agent echoes it back)
my $id = $stack->start_job($utf8->encode({ command => "echo \x{1f600}",
                                           nodes => ['node1'],
                                           capture_output => JSON::PP::true }));
my $job = $stack->wait_job($id, 30);
is $job->{status}, 'complete', 'a job with a non-ASCII command completes';
$res = $stack->request('GET', "$jobs/$id/output/node1/stdout",
                       headers => { Accept => 'application/octet-stream' });
is $res->{content}, "\xF0\x9F\x98\x80\n", '  its output is the character';

# --- a damaged spooled report does not wedge the agent's channel ----------

$stack->stop_agent('node1');
my $spooled = $stack->agent_dir('node1') . "/spool/$known.json";
PushJobs::Stack::spew($spooled, '{"type":"succeeded","job_id":"' . $known
                                . '","stdout":"\ud800' . ('[' x 1000));
$stack->start_agent('node1');
ok PushJobs::Stack::wait_for(20, sub { !-e $spooled }),
   'an agent drops a damaged spooled report instead of re-sending it';
like PushJobs::Stack::slurp($stack->agent_log('node1')),
     qr/job $known: the spooled report is damaged, dropped/, '  and says so';
ok $stack->wait_online(['node1'], 20), '  its channel stays open';
my ($hello) = reverse grep { /"type":"hello"/ }
              split /\n/, PushJobs::Stack::slurp($stack->agent_log('node1'));
ok defined $hello && $hello !~ /$known/,
   '  and its hello does not list the job as finished'
    or diag $hello;
$id = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($id, 30)->{status}, 'complete', '  and runs jobs';

# --- the workers lived through all of it -----------------------------------

is workers(), $workers, 'the same nginx workers as at the start';
my @died = grep { /exited on signal|worker process \d+ exited/ }
           split /\n/, $stack->error_log;
is_deeply \@died, [], 'no worker exited' or diag join "\n", @died;
is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg]';

$stack->stop;
done_testing;
