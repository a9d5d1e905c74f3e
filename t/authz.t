# Authorization by the org's Chef groups (contract §2.3): reads need
# pushy_job_readers when it exists, else any org member; writes need
# pushy_job_writers when it exists, else admins, else nobody; membership
# is by user or by client, through nested groups; groups are read on every
# request, so a change counts at once; config/NODE is for the node itself.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 0);
$stack->start;

my $org = $stack->org;
my $base = "/organizations/$org/pushy";
my $jobs = "$base/jobs";
my $job = { command => 'true', nodes => ['ghost'] };

sub denied_msg {
    "User or client '$_[0]' does not have access to that action on this "
    . "server."
}

sub can_write {
    my ($who, $expect, $name) = @_;
    my $res = $stack->request('POST', $jobs, body => $job, user => $who);
    if ($expect) {
        is $res->{status}, 201, "$name: $who may start a job"
            or diag $res->{content};
        return PushJobs::Stack::job_id_of($res);
    }
    is $res->{status}, 403, "$name: $who may not start a job";
    is_deeply $res->{json}, { error => [ denied_msg($who) ] },
        '  with the 2.x message' or diag $res->{content};
    return undef;
}

my $id = can_write('alice', 1, 'setup');

# every read: the job list, a job, an output, both node state endpoints and
# the feeds (a reader that does not ask for text/event-stream gets 406,
# which comes after authorization)
my @reads = (
    [ $jobs, 200 ],
    [ "$jobs/$id", 200 ],
    [ "$jobs/$id/output/ghost/stdout", 404,
      { Accept => 'application/octet-stream' } ],
    [ "$base/node_states", 200 ],
    [ "$base/node_states/ghost", 200 ],
    [ "$base/job_status_feed", 406 ],
    [ "$base/job_status_feed/$id", 406 ],
);

sub can_read {
    my ($who, $expect, $name) = @_;
    for my $r (@reads) {
        my ($path, $status, $h) = @$r;
        my $res = $stack->request('GET', $path, user => $who,
                                  ($h ? (headers => $h) : ()));
        if ($expect) {
            is $res->{status}, $status, "$name: $who reads $path";
        } else {
            is $res->{status}, 403, "$name: $who may not read $path";
            is_deeply $res->{json}, { error => [ denied_msg($who) ] },
                '  with the 2.x message';
        }
    }
}

# --- no pushy groups --------------------------------------------------------

my $t = 'no pushy groups';
can_write('alice', 1, "$t, admin");
can_write('bob', 0, "$t, member");
can_write('ghost', 0, "$t, client");
can_read($_, 1, $t) for qw(alice bob ghost);

# no admins group either: nobody writes
$stack->delete_group('admins');
can_write('alice', 0, 'no admins group');
can_read('bob', 1, 'no admins group');
$stack->set_group('admins', users => [qw(pivotal alice)]);
can_write('alice', 1, 'admins group back');

# --- pushy_job_writers ------------------------------------------------------

$stack->set_group('pushy_job_writers', users => ['bob']);
$t = 'writers [bob]';
can_write('bob', 1, $t);
can_write('alice', 0, "$t, an admin");
can_write('ghost', 0, $t);
can_read($_, 1, "$t, no readers group") for qw(alice bob ghost);

# a client is looked up among clients, a user among users
$stack->set_group('pushy_job_writers', clients => ['ghost'], users => []);
can_write('ghost', 1, 'writers with client ghost');
can_write('bob', 0, 'writers with client ghost');
$stack->set_group('pushy_job_writers', users => ['ghost']);
can_write('ghost', 0, 'writers with a user named ghost');

# a user of another org stays outside, whatever the groups say
$stack->set_group('pushy_job_writers', users => ['dave']);
my $res = $stack->request('POST', $jobs, body => $job, user => 'dave');
is $res->{status}, 403, 'a writer who is not in the org: 403';
is_deeply $res->{json},
    { error => [ "'dave' is not associated with organization '$org'" ] },
    '  not associated with the org';

# --- pushy_job_readers ------------------------------------------------------

$stack->set_group('pushy_job_writers', users => ['alice']);
$stack->set_group('pushy_job_readers', users => ['bob']);
$t = 'readers [bob]';
can_read('bob', 1, $t);
can_read('alice', 0, "$t, an admin and writer");
can_read('ghost', 0, $t);

# a writer who is not a reader posts but cannot poll
$id = can_write('alice', 1, "$t, writers [alice]");
$res = $stack->request('GET', "$jobs/$id", user => 'alice');
is $res->{status}, 403, '  and cannot read the job she started';

$stack->set_group('pushy_job_readers', clients => ['ghost']);
can_read('ghost', 1, 'readers with client ghost');
can_read('bob', 0, 'readers with client ghost');

# no caching: a change of membership counts at the next request
$stack->set_group('pushy_job_readers', users => ['bob']);
can_read('bob', 1, 'bob added back');
$stack->set_group('pushy_job_readers', users => []);
can_read('bob', 0, 'bob removed');

# --- nested groups ----------------------------------------------------------

$stack->set_group('inner', clients => ['ghost']);
$stack->set_group('team', users => ['bob'], groups => ['inner']);
$stack->set_group('pushy_job_readers', groups => ['team']);
$stack->set_group('pushy_job_writers', groups => [qw(nosuchgroup team)]);
$t = 'nested team > inner';
can_read('bob', 1, "$t, readers");
can_read('ghost', 1, "$t (two levels), readers");
can_read('alice', 0, "$t, readers");
can_write('bob', 1, "$t, writers");
can_write('ghost', 1, "$t (two levels), writers");
can_write('alice', 0, "$t, writers");

# a cycle of groups ends
$stack->set_group('loop_a', groups => ['loop_b']);
$stack->set_group('loop_b', groups => ['loop_a']);
$stack->set_group('pushy_job_readers', groups => ['loop_a']);
can_read('bob', 0, 'a cycle of groups');

# the readers group gone: any member reads again
$stack->delete_group('pushy_job_readers');
can_read($_, 1, 'readers deleted') for qw(alice bob ghost);
$stack->delete_group('pushy_job_writers');
can_write('alice', 1, 'writers deleted, admin');
can_write('bob', 0, 'writers deleted, member');

# --- config/NODE: the node itself, whatever the groups --------------------

$stack->set_group('pushy_job_readers', users => ['alice']);
$res = $stack->request('GET', "$base/config/ghost", user => 'ghost');
is $res->{status}, 200, 'config: the node itself, not a reader: 200';
$res = $stack->request('GET', "$base/config/ghost", user => 'alice');
is $res->{status}, 403, 'config: a reader user: 403';
is_deeply $res->{json}, { error => ['Client and node name must match'] },
    '  Client and node name must match';
$stack->delete_group('pushy_job_readers');

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
