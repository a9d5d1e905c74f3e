# PostgreSQL outages.  PostgreSQL is stopped (pg_ctl -m fast) while a job
# runs on the agents, once for less and once for more than the owners'
# heartbeat timeout (20 s, NGX_PUSHJOBS_OWNER_TIMEOUT), and started again on
# the same port.  While it is down:
#
#   - GET and POST jobs answer 503 within 2 s (the pool knows the database
#     is unreachable and fails queries at once; before, 10 s each);
#   - /pushy/_status answers 503 at once and says PostgreSQL is down.
#
# After it is back:
#
#   - the running job ends complete, each node's result recorded once (the
#     results the agents sent during the outage are applied after it);
#   - the first job posted sees every agent that stayed connected (before:
#     after an outage longer than the heartbeat timeout, every node was
#     "unavailable" and the job "quorum_failed"), and no worker was
#     declared gone;
#   - an agent that reconnected during the outage is online again, and one
#     that left during it is offline (presence changes are not lost);
#   - _status is 200 again;
#   - nginx logged no [alert] (the module deleted the epoll events of
#     sockets libpq had already closed) nor [crit] (check_invariants).
#
# And the LISTEN connections alone lost and kept from reconnecting: a job
# posted meanwhile gets no NOTIFY; once they listen again the workers catch
# up and the job runs (docs/DESIGN.md §3, step 6).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use PushJobs::Stack;
use PushJobs::Fault qw(check_invariants timed listen_cut listen_restore);

my $OWNER_TIMEOUT = 20;       # seconds, NGX_PUSHJOBS_OWNER_TIMEOUT
my $REST_BOUND = 2;           # a 503 within ~1 s, with a margin for 2 cores
my $STATUS_BOUND = 1;

my $s = PushJobs::Stack->new(agents => 4, workers => 2);
$s->start;

my $org = $s->org;
# node4 leaves during the long outage; the jobs run on the others
my ($leaver, @nodes) = reverse $s->agent_names;
@nodes = sort @nodes;
my @ids;

sub wait_for { PushJobs::Stack::wait_for(@_) }

sub post_job {
    my ($job) = @_;
    return $s->request('POST', "/organizations/$org/pushy/jobs", body => $job);
}

sub job_running {
    my ($id, @on) = @_;
    return wait_for(30, sub {
        my $job = $s->job($id) or return 0;
        my %running = map { $_ => 1 } @{ $job->{nodes}{running} // [] };
        return $job->{status} eq 'running' && @on == grep { $running{$_} } @on;
    }, 0.1);
}

# Requests of every kind, again and again for $secs seconds of the outage;
# each must answer 503 within its bound.  Returns a list of problems.
sub while_down {
    my ($secs, $job_id, $also) = @_;
    my (@bad, %n);
    my $end = time + $secs;
    my %req = (
        'GET jobs' => sub { $s->request('GET', "/organizations/$org/pushy/jobs") },
        'GET jobs/ID' => sub {
            $s->request('GET', "/organizations/$org/pushy/jobs/$job_id") },
        'POST jobs' => sub { post_job({ command => 'true', nodes => \@nodes }) },
        'GET node_states' => sub {
            $s->request('GET', "/organizations/$org/pushy/node_states") },
    );
    while (time < $end || !%n) {
        my ($t, $res) = timed(sub { $s->http->get($s->url . '/pushy/_status') });
        $n{status}++;
        my $body = eval { $s->json->decode($res->{content}) } || {};
        push @bad, sprintf('_status: %s in %.2f s: %s', $res->{status}, $t,
                           $res->{content})
            unless $res->{status} == 503 && $t < $STATUS_BOUND
                   && ($body->{status} // '') eq 'fail'
                   && grep { $_ eq 'postgresql' } @{ $body->{down} // [] };
        for my $name (sort keys %req) {
            ($t, $res) = timed($req{$name});
            $n{$name}++;
            push @bad, sprintf('%s: %s in %.2f s: %s', $name, $res->{status},
                               $t, $res->{content})
                unless $res->{status} == 503 && $t < $REST_BOUND
                       && ($res->{content} // '') =~ /database is not available/;
        }
        $also->() if $also;
        $also = undef;
        sleep 0.2;    # pace the rounds: the box is shared
    }
    note 'requests while down: ', join ', ', map { "$_ $n{$_}" } sort keys %n;
    return @bad;
}

# After the restart: the first job accepted (503 until the worker has its
# connections back) must find every agent that stayed connected (@on).
sub first_job_after {
    my ($label, @on) = @_;
    my $res;
    wait_for(20, sub {
        $res = post_job({ command => 'true', nodes => \@on });
        $res->{status} != 503;
    }, 0.05);
    is $res->{status}, 201, "$label: the first job after the restart is created"
        or diag $res->{content};
    my $id = PushJobs::Stack::job_id_of($res);
    push @ids, $id;
    my $job = $s->job($id);
    is_deeply $job->{nodes}{unavailable} // [], [],
        "$label: it sees every agent that stayed connected (none unavailable)"
        or diag explain $job;
    $job = $s->wait_job($id, 60);
    is $job->{status}, 'complete', "$label: and ends complete"
        or diag explain $job;
    is_deeply $job->{nodes}, { succeeded => [ sort @on ] },
        "$label: on every node";
}

sub status_back {
    my ($label) = @_;
    ok wait_for(20, sub {
        my $res = $s->http->get($s->url . '/pushy/_status');
        $res->{status} == 200 && $res->{content} =~ /it's alive/;
    }, 0.1), "$label: _status is 200 again";
}

# --- an outage shorter than the heartbeat timeout --------------------------

my $id = $s->start_job({ command => 'sleep 4', nodes => \@nodes,
                         run_timeout => 300 });
push @ids, $id;
ok job_running($id, @nodes), 'short: a sleep job runs on every agent';

$s->pg_stop;
my @bad = while_down(3, $id);
is_deeply \@bad, [], 'short: while PostgreSQL is down, every request gets '
    . "its 503 at once (_status < ${STATUS_BOUND} s, the API < ${REST_BOUND} s)";
$s->pg_start;

status_back('short');
my $job = $s->wait_job($id, 60);
is $job->{status}, 'complete', 'short: the running job ends complete'
    or diag explain $job;
is_deeply $job->{nodes}, { succeeded => [ sort @nodes ] },
    '  with every node succeeded';
first_job_after('short', @nodes);

# --- an outage longer than the heartbeat timeout --------------------------
#
# The job runs on node1 and node2; node3's agent is restarted during the
# outage, node4's stopped: their disconnects and node3's reconnect
# (presence, hello) are applied after it.

$id = $s->start_job({ command => 'sleep 3', nodes => [ @nodes[0, 1] ],
                      run_timeout => 300 });
push @ids, $id;
ok job_running($id, @nodes[0, 1]), 'long: a sleep job runs on node1, node2';

$s->pg_stop;
my $down_at = time;
@bad = while_down($OWNER_TIMEOUT + 5, $id, sub {
    $s->stop_agent($leaver);
    $s->stop_agent($nodes[2]);
    $s->start_agent($nodes[2]);
});
is_deeply \@bad, [], "long: while PostgreSQL is down (> ${OWNER_TIMEOUT} s), "
    . 'every request gets its 503 at once';
cmp_ok time - $down_at, '>', $OWNER_TIMEOUT + 1,
    '  and it was down for longer than the heartbeat timeout';
$s->pg_start;

# node3 reconnected during the outage: it is online once its worker, back
# too, has written that (below), maybe after this job
first_job_after('long', @nodes[0, 1]);
status_back('long');
$job = $s->wait_job($id, 60);
is $job->{status}, 'complete',
    'long: the job that ran through the outage ends complete'
    or diag explain $job;
is_deeply $job->{nodes}, { succeeded => [ sort @nodes[0, 1] ] },
    '  with the results sent during the outage';
ok $s->wait_online(\@nodes, 20),
    'the agent that reconnected during the outage is online';
ok wait_for(20, sub {
    my $res = $s->request('GET', "/organizations/$org/pushy/node_states");
    $res->{status} == 200
        && !grep { $_->{node_name} eq $leaver } @{ $res->{json} // [] };
}, 0.2), 'the agent that left during the outage is offline';
unlike $s->error_log, qr/declared gone/,
    'no worker was declared gone for beats the outage prevented';
like $s->error_log, qr/postgres is unreachable/,
    'the outage is logged once per worker';

# --- the LISTEN connections lost, the query pool up ------------------------

is PushJobs::Fault::listen_count($s), 2,
    'listen: one LISTEN connection per worker';
ok listen_cut($s), 'listen: both are gone, and cannot come back';

$id = $s->start_job({ command => 'true', nodes => \@nodes });
push @ids, $id;
ok !wait_for(3, sub { ($s->job($id) // {})->{status} ne 'voting' }, 0.2),
    'listen: a job posted meanwhile waits: its NOTIFY reached no worker';

ok listen_restore($s, 2), 'listen: the workers LISTEN again';
$job = $s->wait_job($id, 20);
is $job->{status}, 'complete',
    'listen: they catch up: the job runs, long before its voting timeout'
    or diag explain $job;

is_deeply [ check_invariants($s, \@ids) ], [],
    'every job final, each result once, no [alert] or [crit] in the log';

$s->stop;
done_testing;
