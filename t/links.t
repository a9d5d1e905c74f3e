# Read-only links for browsers (issue 14): a signed reader mints a link
# (GET jobs/ID/link, GET link), POST jobs answers one in a Link header, and
# a request with "Authorization: Bearer TOKEN" may read that job (or, with
# an org link, the org's jobs, list and feed) and nothing else.  Altered,
# expired, other-org and other-job tokens are refused; the key is shared
# by both workers and by a second front end through PostgreSQL; a browser
# asking for a job gets the static page, with its security headers.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use Test::More;
use PushJobs::Stack;
use PushJobs::SSE;

# the pages: this test's own, so that it does not depend on ui/'s content
my $ui = tempdir(CLEANUP => 1);
for (['job.html', "<!doctype html><title>job</title>\n"],
     ['jobs.html', "<!doctype html><title>jobs</title>\n"],
     ['app.js', "'use strict';\n"],
     ['notes.txt', "not served\n"]) {
    open my $fh, '>', "$ui/$_->[0]" or die $!;
    print $fh $_->[1];
    close $fh;
}

my $stack = PushJobs::Stack->new(agents => 2, workers => 2, ui => $ui);
$stack->start;
$stack->start_nginx('fe2');

my $org = $stack->org;
my $base = "/organizations/$org/pushy";

sub bearer {
    my ($token, $path, %o) = @_;
    my $res = $stack->http->request($o{method} // 'GET',
        $stack->url($o{fe}) . $path,
        { headers => { Authorization => "Bearer $token",
                       Accept => $o{accept} // 'application/json',
                       %{ $o{headers} // {} } },
          defined $o{content} ? (content => $o{content}) : () });
    $res->{json} = eval { PushJobs::Stack::json()->decode($res->{content}) };
    return $res;
}

sub error_of { my $j = $_[0]{json}; ref $j eq 'HASH' ? "@{ $j->{error} // [] }" : '' }

# --- a job, and its link ---------------------------------------------------

my $res = $stack->request('POST', "$base/jobs",
    body => { command => 'echo hello', nodes => [ $stack->agent_names ],
              capture_output => JSON::PP::true });
is $res->{status}, 201, 'a job posted';
my ($id) = $res->{json}{uri} =~ m{/jobs/([0-9a-f]{32})$};
my $link_header = $res->{headers}{link} // '';
like $link_header,
    qr{^<https://127\.0\.0\.1:\d+/organizations/\Q$org\E/pushy/jobs/$id#token=([^>]+)>; rel="alternate"; type="text/html"$},
    'POST jobs: a Link header to the job\'s page, the token in the fragment';
my ($post_token) = $link_header =~ /#token=([^>]+)>/;
$stack->wait_job($id, 30);

$res = $stack->request('GET', "$base/jobs/$id/link");
is $res->{status}, 200, 'GET jobs/ID/link: 200';
my $link = $res->{json};
like $link->{url}, qr{^https://127\.0\.0\.1:\d+/organizations/\Q$org\E/pushy/jobs/$id#token=\Q$link->{token}\E$},
    '  url: the job\'s page with the token in the fragment';
like $link->{token}, qr/^1\.\d+\.\Q$org\E\.$id\.\d+\.[A-Za-z0-9_-]{43}$/,
    '  token: version, key, org, job, expiry, MAC';
like $link->{expires_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
    '  expires_at';
my ($exp) = $link->{token} =~ /\.(\d+)\.[^.]+$/;
cmp_ok abs($exp - time - 3600), '<=', 5, '  valid for an hour by default';

$res = $stack->request('GET', "$base/jobs/$id/link?ttl=120");
my ($exp2) = $res->{json}{token} =~ /\.(\d+)\.[^.]+$/;
cmp_ok abs($exp2 - time - 120), '<=', 5, '  ?ttl=120: two minutes';
is $stack->request('GET', "$base/jobs/$id/link?ttl=0")->{status}, 400,
    '  ?ttl=0: 400';
is $stack->request('GET', "$base/jobs/$id/link?ttl=604801")->{status}, 400,
    '  ?ttl beyond 7 days: 400';
is $stack->request('GET', "$base/jobs/" . ('0' x 32) . '/link')->{status},
    404, '  an unknown job: 404';
is $stack->http->get($stack->url . "$base/jobs/$id/link")->{status}, 400,
    '  unsigned: 400, as any unsigned request';

# --- what a job link reads ---------------------------------------------------

my $t = $link->{token};
my $signed = $stack->request('GET', "$base/jobs/$id");
$res = bearer($t, "$base/jobs/$id");
is $res->{status}, 200, 'the link reads its job';
is_deeply $res->{json}, $signed->{json}, '  the same document as signed';

$res = bearer($post_token, "$base/jobs/$id");
is $res->{status}, 200, 'the Link header\'s token reads it too';

$res = bearer($t, "$base/jobs/$id/output/node1/stdout",
              accept => 'application/octet-stream');
is $res->{status}, 200, 'its output';
is $res->{content}, "hello\n", '  the bytes';

my $feed = PushJobs::SSE->open($stack, "$base/job_status_feed/$id",
    headers => { Authorization => "Bearer $t" }, unsigned => 1);
is $feed->status, 200, 'its event feed';
$feed->close;

my $ok = 1;
for (1 .. 10) {
    $ok &&= bearer($t, "$base/jobs/$id")->{status} == 200;
    $ok &&= bearer($t, "$base/jobs/$id", fe => 'fe2')->{status} == 200;
}
ok $ok, 'both workers of both front ends take it (the key is shared)';

# --- what it does not ---------------------------------------------------------

my $id2 = $stack->start_job({ command => 'true',
                              nodes => [ $stack->agent_names ] });
$stack->wait_job($id2, 30);

$res = bearer($t, "$base/jobs/$id2");
is $res->{status}, 403, 'another job: 403';
like error_of($res), qr/another job/, '  saying so';
is bearer($t, "$base/jobs")->{status}, 403, 'the job list: 403';
is bearer($t, "$base/job_status_feed",
          accept => 'text/event-stream')->{status}, 403, 'the org feed: 403';
is bearer($t, "$base/node_states")->{status}, 403, 'node states: 403';
is bearer($t, "$base/jobs/$id/abort", method => 'POST',
          content => '{}')->{status}, 403, 'abort: 403';
is bearer($t, "$base/jobs", method => 'POST',
          headers => { 'Content-Type' => 'application/json' },
          content => '{"command":"true","nodes":["node1"]}')->{status},
    403, 'POST jobs: 403';
is bearer($t, "/organizations/other/pushy/jobs/$id")->{status}, 401,
    'another org: 401';

# altered: each part, and the MAC
my @p = split /\./, $t;
my %altered = (
    'the MAC' => join('.', @p[0 .. 4],
                      ($p[5] =~ /^A/ ? 'B' : 'A') . substr($p[5], 1)),
    'the expiry' => join('.', @p[0 .. 3], $p[4] + 3600, $p[5]),
    'the job' => join('.', @p[0 .. 2], $id2, @p[4, 5]),
    'the org' => join('.', @p[0, 1], 'other', @p[3 .. 5]),
    'the key id' => join('.', $p[0], $p[1] + 1, @p[2 .. 5]),
    'truncated' => substr($t, 0, -1),
    'the version' => join('.', 2, @p[1 .. 5]),
);
for my $what (sort keys %altered) {
    my $path = $what eq 'the job' ? "$base/jobs/$id2" : "$base/jobs/$id";
    $res = bearer($altered{$what}, $path);
    is $res->{status}, 401, "altered $what: 401";
    like error_of($res), qr/invalid link|another organization/,
        '  invalid link';
}
is bearer('', "$base/jobs/$id")->{status}, 400,
    'an empty token: no link, an unsigned request (400)';
is bearer('x' x 600, "$base/jobs/$id")->{status}, 401,
    'an overlong token: 401';

# expired
$res = $stack->request('GET', "$base/jobs/$id/link?ttl=1");
my $short = $res->{json}{token};
ok PushJobs::Stack::wait_for(10, sub {
    my $r = bearer($short, "$base/jobs/$id");
    $r->{status} == 401 && error_of($r) =~ /link expired/;
}, 0.2), 'a link past its expiry: 401 "link expired"';

# --- the org's link ----------------------------------------------------------

$res = $stack->request('GET', "$base/link");
is $res->{status}, 200, 'GET link: the org\'s list';
like $res->{json}{url}, qr{/organizations/\Q$org\E/pushy/jobs#token=},
    '  url: the job list page';
my $ot = $res->{json}{token};
like $ot, qr/^1\.\d+\.\Q$org\E\.\*\.\d+\./, '  token for "*"';
$res = bearer($ot, "$base/jobs");
is $res->{status}, 200, '  reads the list';
ok((grep { $_->{id} eq $id2 } @{ $res->{json} }), '  with the jobs');
is bearer($ot, "$base/jobs/$id2")->{status}, 200, '  reads any job';
$feed = PushJobs::SSE->open($stack, "$base/job_status_feed",
    headers => { Authorization => "Bearer $ot" }, unsigned => 1);
is $feed->status, 200, '  follows the org feed';
$feed->close;
is bearer($ot, "$base/node_states")->{status}, 403, '  not node states';

# --- the pages ----------------------------------------------------------------

$res = $stack->http->get($stack->url . "$base/jobs/$id",
                         { headers => { Accept => 'text/html,*/*' } });
is $res->{status}, 200, 'a browser asking for the job: the page';
like $res->{headers}{'content-type'}, qr{^text/html}, '  text/html';
is $res->{content}, "<!doctype html><title>job</title>\n", '  job.html';
like $res->{headers}{'content-security-policy'},
    qr/default-src 'none'; script-src 'self'/, '  with a strict CSP';
is $res->{headers}{'x-content-type-options'}, 'nosniff', '  nosniff';
is $res->{headers}{'referrer-policy'}, 'no-referrer', '  no referrer';

$res = $stack->http->get($stack->url . "$base/jobs",
                         { headers => { Accept => 'text/html' } });
is $res->{content}, "<!doctype html><title>jobs</title>\n",
    'the job list: jobs.html';
$res = $stack->http->get($stack->url . "$base/_ui/app.js");
is $res->{status}, 200, '_ui/app.js';
like $res->{headers}{'content-type'}, qr{^text/javascript}, '  javascript';
is $stack->http->get($stack->url . "$base/_ui/notes.txt")->{status}, 404,
    '_ui/notes.txt: not a page file, 404';
is $stack->http->get($stack->url . "$base/_ui/..%2fjob.html")->{status}, 404,
    '_ui/..%2f: 404';
is $stack->http->get($stack->url . "$base/jobs/$id")->{status}, 400,
    'no Accept: text/html, unsigned: 400 as before';

# the token is in no log: fragments are not sent, headers not logged
my $logs = $stack->error_log . $stack->error_log('fe2');
for my $f (glob "$stack->{dir}/*/access.log") {
    open my $fh, '<', $f or next;
    local $/;
    $logs .= <$fh>;
}
unlike $logs, qr/\Q$p[5]\E/, 'no log holds a token\'s MAC';

$stack->stop;
done_testing;
