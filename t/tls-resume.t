# An agent resumes its TLS session when it reconnects (issue 15: a
# reconnect storm after a restart costs nginx no private key operation per
# agent): it keeps the server's last session ticket; the front ends share
# the ticket key (ssl_session_ticket_key, as the add-on writes it), so the
# session survives an nginx restart and a reload; a connected agent is
# given fresh tickets, so that it resumes also long after its handshake;
# its tickets live pushjobs_ticket_lifetime, not ssl_session_timeout, so
# that it resumes also after an outage (or a storm) longer than that.
# Checked from nginx's side: $ssl_session_reused of each channel's
# upgrade request in an access log of its own.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 1, workers => 2,
    nginx_extra => q{log_format resume '$ssl_session_reused $request_uri'; }
                   . 'pushjobs_ping_interval 1s; ssl_session_timeout 20s; '
                   . 'ssl_protocols TLSv1.2 TLSv1.3; '
                   # first nginx's timeout, for the renewal
                   . 'pushjobs_ticket_lifetime 0;');
$stack->{fe}{fe1}{server_extra} =
    "access_log @{[ $stack->dir ]}/fe1/resume.log resume;";
$stack->start;

my $org = $stack->org;

# the upgrade requests of node1's channel, in order: 'r' resumed, '.' not
sub upgrades {
    my ($fe) = @_;
    my $log = $stack->dir . '/' . ($fe // 'fe1') . '/resume.log';
    open my $fh, '<', $log or return ();
    return map { /^(\S+) \S*\/pushy\/agent$/ ? $1 : () } <$fh>;
}

# the resume log, added to the server{} of each front end
sub start_fe {
    my ($fe) = @_;
    $stack->start_nginx($fe, server_extra =>
        "access_log @{[ $stack->dir ]}/$fe/resume.log resume;");
}

ok $stack->wait_online(['node1'], 30), 'node1 online';
ok PushJobs::Stack::wait_for(10, sub { upgrades() >= 1 }, 0.1),
    'its channel\'s upgrade logged';
is_deeply [ upgrades() ], ['.'], '  the first: a full handshake';

# nginx restarted: the agent reconnects with its ticket
my $n = () = upgrades();
$stack->stop_nginx('fe1');
start_fe('fe1');
ok PushJobs::Stack::wait_for(30, sub { upgrades() > $n }, 0.1),
    'nginx restarted: node1 reconnected';
is +(upgrades())[-1], 'r', '  resuming its session (the ticket key survived)';
ok $stack->wait_online(['node1'], 30), '  online';

# a reload: the old workers close the channel (1001), the new ones resume it
$n = () = upgrades();
kill 'HUP', $stack->{procs}{'nginx:fe1'};
ok PushJobs::Stack::wait_for(30, sub { upgrades() > $n }, 0.1),
    'a reload: node1 reconnected';
is +(upgrades())[-1], 'r', '  resumed';

# a job runs over the resumed channel
my $id = $stack->start_job({ command => 'true', nodes => ['node1'] });
is $stack->wait_job($id, 30)->{status}, 'complete',
    'a job runs over the resumed channel';

# A ticket is good for ssl_session_timeout (20 s here) from when it was
# issued, and a channel lives far longer: the server gives a connected
# agent a new ticket once half of that time has passed (with a ping), so
# that its reconnect long after its handshake still resumes.  Waiting is
# the test: twice the timeout, so the reload's ticket above has expired.
# The agent's last ticket is then at most 10 s + a ping (1 s) + a second
# of nginx's clock old, which leaves 8 s for the restart and the
# reconnect (a timeout of 4 s left none under ASan: CI, 2026-12-05).
my $since = time;
PushJobs::Stack::wait_for(60, sub { time - $since >= 41 }, 0.5);
$n = () = upgrades();
$stack->stop_nginx('fe1');
start_fe('fe1');
ok PushJobs::Stack::wait_for(30, sub { upgrades() > $n }, 0.1),
    'restarted twice the session timeout after the last handshake';
is +(upgrades())[-1], 'r',
    '  resumed all the same: the channel was given fresh tickets';

# pushjobs_ticket_lifetime: an outage longer than ssl_session_timeout (or
# a storm in which the agent reconnects late) would expire a ticket of
# nginx's timeout, however fresh.  With the default (1 hour) the channel's
# first ping gives it a ticket of that lifetime.
$stack->{nginx_extra} =~ s/pushjobs_ticket_lifetime 0;//;
$n = () = upgrades();
$stack->stop_nginx('fe1');
start_fe('fe1');
ok PushJobs::Stack::wait_for(30, sub { upgrades() > $n }, 0.1),
    'the default ticket lifetime: node1 reconnected';
ok $stack->wait_online(['node1'], 30), '  online';
# two pings: the first gives it the long ticket
$since = time;
PushJobs::Stack::wait_for(20, sub { time - $since >= 4.5 }, 0.5);
$n = () = upgrades();
$stack->stop_nginx('fe1');
# an outage of twice ssl_session_timeout
$since = time;
PushJobs::Stack::wait_for(60, sub { time - $since >= 41 }, 0.5);
start_fe('fe1');
# the agent's backoff has grown meanwhile (1 s doubling to 60 s, full
# jitter): its next try comes within a minute
ok PushJobs::Stack::wait_for(90, sub { upgrades() > $n }, 0.1),
    'nginx down for twice ssl_session_timeout: node1 reconnected';
is +(upgrades())[-1], 'r', '  resumed: its ticket lives an hour';

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';
$stack->stop;
done_testing;
