# The job pages in a browser (issue 14, part 2): headless Chromium (Debian's
# chromium package) driven over its DevTools protocol opens the link a
# reader minted, against a real stack.  The page shows the job, colours
# each node's cell as events arrive (from the feed: the job document is
# read once), shows a captured node's live output on click, shows every
# value as text, refuses an altered token and another job's; the org's
# list shows the jobs and adds a new one live.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Temp qw(tempdir);
use JSON::PP;
use Test::More;
use PushJobs::Stack;
use PushJobs::Browser;
use PushJobs::Fault qw(worker_pids kill_worker);

PushJobs::Browser::chromium()
    or BAIL_OUT('chromium not found: install Debian\'s chromium package '
                . '(stack/install-deps)');

my $tmp = tempdir('pushjobs-ui-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $tmp;
PushJobs::Stack::spew("$tmp/lines", <<'EOF2', 0755);
#!/bin/sh
i=1
while [ $i -le "$1" ]; do
    echo "line $i"
    i=$((i + 1))
    sleep 0.3
done
EOF2

my $stack = PushJobs::Stack->new(
    agents => 3, workers => 2,
    whitelist => { 'lines' => "$tmp/lines 12", 'true' => 'true' },
);
$stack->start;

my $org = $stack->org;
my $base = "/organizations/$org/pushy";
my @nodes = $stack->agent_names;
my $b;

END { $b->close if $b }

sub link_for {
    my ($path) = @_;
    my $res = $stack->request('GET', "$base$path");
    is $res->{status}, 200, "GET $path: a link" or diag $res->{content};
    return $res->{json};
}

# a fresh document each time (a link differing only in its fragment would
# not load the page again)
sub open_page {
    $b->navigate('about:blank');
    $b->navigate($_[0]);
}

sub js_str { JSON::PP->new->allow_nonref->encode($_[0]) }

sub text { $b->eval("(document.getElementById(@{[ js_str($_[0]) ]}) || {}).textContent") // '' }

$b = PushJobs::Browser->new(width => 1280, height => 900);

# --- a running, captured job ----------------------------------------------------

my $id = $stack->start_job({ command => 'lines', nodes => \@nodes,
                             capture_output => JSON::PP::true });
my $link = link_for("/jobs/$id/link");
open_page($link->{url});

ok $b->wait_until('document.getElementById("command").textContent === "lines"'),
    'the page shows the command';
my $user = 'alice';    # whom the stack signs as
ok $b->wait_until(q{[...document.querySelectorAll('#facts dd')].some(
        d => d.dataset.fact === 'started by' && d.textContent === }
        . js_str($user) . ')'), "  and who started it ($user)";
ok $b->wait_until('document.querySelectorAll("#grid .cell").length === 3'),
    '  a cell per node';
is $b->eval('[...document.querySelectorAll("#grid .cell")].map(c => c.title.split(":")[0]).sort().join(",")'),
    join(',', sort @nodes), '  named in their titles';

ok $b->wait_until('!!document.querySelector("#grid .cell.s-running")', 20),
    'a cell turns running as the run starts';

# a captured job: a click shows the node's output, then appended live
$b->eval(q{document.querySelector('#grid .cell[data-node="node1"]').click()});
ok $b->wait_until('!document.getElementById("output-panel").hidden'),
    'a click on a node opens its output';
ok $b->wait_until('document.getElementById("out-stdout").textContent.includes("line 2\n")', 20),
    '  its output so far';
ok $b->wait_until('document.getElementById("out-stdout").textContent.includes("line 12\n")', 20),
    '  then what it prints next, live';
is $b->eval('(document.getElementById("out-stdout").textContent.match(/^line \d+$/mg) || []).join(",")'),
    join(',', map { "line $_" } 1 .. 12), '  every line once, in order';

ok $b->wait_until('document.querySelectorAll("#grid .cell.s-succeeded").length === 3', 30),
    'every cell turns succeeded';
ok $b->wait_until('document.getElementById("job-status").textContent === "complete"'),
    '  the job: complete';
my $tr = $b->eval('pushjobsPage.state.transitions.filter(t => t[0] === "node1").map(t => t[1]).join(",")');
like $tr, qr/ready,running,succeeded$/,
    "  node1 went ready, running, succeeded ($tr)";
isnt $b->eval('getComputedStyle(document.querySelector("#grid .cell")).backgroundColor'),
     $b->eval('(() => { const e = document.createElement("div"); e.className = "cell s-running"; document.body.appendChild(e); const c = getComputedStyle(e).backgroundColor; e.remove(); return c })()'),
     '  in another colour than running';
ok $b->wait_until(q{(document.querySelector('.legend-item[data-status="succeeded"] .legend-count') || {}).textContent === '3'}),
    '  the counts: 3 succeeded';
ok $b->eval('document.querySelectorAll("#events li").length >= 8'),
    '  the events listed';
is $b->eval('pushjobsPage.stats.gets[location.pathname]'), 1,
    'the job document read once: the rest came from the feed (no polling)';
is $b->eval('pushjobsPage.stats.feeds'), 1, '  one feed connection';

# --- a dropped feed: resumed -----------------------------------------------------

my $idr = $stack->start_job({ command => 'lines', nodes => \@nodes,
                              capture_output => JSON::PP::true });
open_page(link_for("/jobs/$idr/link")->{url});
ok $b->wait_until('document.querySelectorAll("#grid .cell").length === 3'),
    'another captured job: its page';
$b->eval(q{document.querySelector('#grid .cell[data-node="node2"]').click()});
ok $b->wait_until('document.getElementById("out-stdout").textContent.includes("line 3\n")', 20),
    'another captured job: node2\'s output shown';
my @killed;
for my $pid (worker_pids($stack)) {
    push @killed, $pid;
    ok scalar(kill_worker($stack, $pid)), "nginx worker $pid killed (its feeds dropped)";
}
ok $b->wait_until('pushjobsPage.stats.feeds >= 2', 20),
    'the page opens the feed again';
ok $b->wait_until('document.querySelectorAll("#grid .cell.s-succeeded").length === 3', 40),
    '  and follows the job to its end';
is $b->eval('(document.getElementById("out-stdout").textContent.match(/^line \d+$/mg) || []).join(",")'),
    join(',', map { "line $_" } 1 .. 12), '  node2\'s output: every line once, in order';
is $b->eval('pushjobsPage.stats.gets[location.pathname]'),
    $b->eval('pushjobsPage.stats.feeds'),
    '  the job document read once per connection, no more';

# --- every value as text ---------------------------------------------------------

my $evil = '<img src=x onerror=alert(1)>';
my $id2 = $stack->start_job({ command => $evil, nodes => ['node2'] });
open_page(link_for("/jobs/$id2/link")->{url});
ok $b->wait_until('document.getElementById("command").textContent === ' . js_str($evil)),
    'a command with markup is shown as text';
is $b->eval('document.querySelectorAll("img").length'), 0, '  no img made';

# --- refused links -----------------------------------------------------------------

(my $bad = $link->{url}) =~ s/(.)$/$1 eq 'A' ? 'B' : 'A'/e;
open_page($bad);
ok $b->wait_until('!document.getElementById("error").hidden'),
    'an altered token: the page shows an error';
like text('error'), qr/401 invalid link/, '  401 invalid link';
ok $b->eval('document.getElementById("main").hidden'), '  and no job';

my @f = split /\./, $link->{token};
$f[4] += 3600;
my $later = join '.', @f;
(my $u = $link->{url}) =~ s/#token=.*/#token=$later/;
open_page($u);
ok $b->wait_until('!document.getElementById("error").hidden'),
    'an expiry moved later: refused';
like text('error'), qr/401 invalid link/, '  401 invalid link';

my $tok2 = link_for("/jobs/$id2/link")->{token};
(my $other = $link->{url}) =~ s/#token=.*/#token=$tok2/;
open_page($other);
ok $b->wait_until('!document.getElementById("error").hidden'),
    'another job\'s token: refused';
like text('error'), qr/403 this link is for another job/, '  403, saying so';

# --- the org's list ------------------------------------------------------------------

my $ol = link_for('/link');
open_page($ol->{url});
ok $b->wait_until("document.querySelector('tr[data-job=\"$id\"]') && document.querySelector('tr[data-job=\"$id2\"]')"),
    'the org page lists the jobs';
is $b->eval('document.querySelector("#jobs tr").dataset.job'), $id2,
    '  newest first';
is $b->eval(q{[...document.querySelectorAll('#jobs td')].filter(t => t.textContent === } . js_str($evil) . ').length'), 1,
    '  the markup as text';
is $b->eval('document.querySelectorAll("img").length'), 0, '  no img made';
like $b->eval("document.querySelector('tr[data-job=\"$id\"] a').href"),
    qr{/pushy/jobs/$id#token=\Q$ol->{token}\E$}, '  linking to the job page with the token';
ok $b->wait_until('document.getElementById("conn").textContent === "live"'),
    '  following the org feed';

my $id3 = $stack->start_job({ command => 'true', nodes => \@nodes });
ok $b->wait_until("document.querySelector('#jobs tr').dataset.job === '$id3'", 15),
    'a new job appears on top, live';
ok $b->wait_until("document.querySelector('tr[data-job=\"$id3\"] td:nth-child(2)').textContent === 'complete'", 20),
    '  and completes';
is $b->eval('pushjobsPage.stats.gets[location.pathname]'), 1,
    '  the list read once';

$b->eval(q{document.querySelector('tr[data-job="} . $id . q{"] a').click()});
ok $b->wait_until("location.pathname.endsWith('$id') && document.getElementById('job-status').textContent === 'complete'"),
    'its link opens the job page with the org token';

(my $bado = $ol->{url}) =~ s/(.)$/$1 eq 'A' ? 'B' : 'A'/e;
open_page($bado);
ok $b->wait_until('!document.getElementById("error").hidden'),
    'an altered org token: refused';
like text('error'), qr/401 invalid link/, '  401 invalid link';

is_deeply [ $b->page_errors ], [],
    'no exception in the pages, nothing the CSP refused';

$b->close;
undef $b;
done_testing;
