# Worker liveness in SQL: a worker that stops beating has its channels
# marked offline by sweep(), 20,000 a sweep, and its owner row removed
# once none is left; a worker declared dead learns it from its next beat
# (so that it publishes its channels again), and a presence batch of a
# dead worker does not bring its owner row back.  PostgreSQL only.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 0);
$stack->start_postgres;

sub sql { my $out = $stack->psql('pushjobs', $_[0]); chomp $out; $out }
sub sweep { sql('SELECT pushjobs.sweep(30000, 20000, 60)') }
sub online { sql("SELECT count(*) FROM pushjobs.presence WHERE owner = '$_[0]' AND online") }
sub owner { sql("SELECT COALESCE((SELECT dead::text FROM pushjobs.owners WHERE id = '$_[0]'), 'none')") }

# w1: 25,000 channels; its first beat creates its row
is sql("SELECT pushjobs.owner_beat('w1')"), 'f', 'a first beat: no row yet';
is owner('w1'), 'false', '  now there is one, alive';
sql("INSERT INTO pushjobs.presence (org, node_name, owner, session, online)
     SELECT 'demo', 'n' || g, 'w1', g, true FROM generate_series(1, 25000) g");
is sql("SELECT count(*) FROM pushjobs.online_nodes('demo', 20000)"), 25000,
    '25,000 channels online';
is sql("SELECT pushjobs.owner_beat('w1')"), 't', 'a beat of a live worker: t';

# w1 stops beating
sql("UPDATE pushjobs.owners SET seen_at = now() - interval '1 minute' WHERE id = 'w1'");
is sql("SELECT count(*) FROM pushjobs.online_nodes('demo', 20000)"), 0,
    'overdue: none of its channels counts as online, before any sweep';
sweep();
is owner('w1'), 'true', 'a sweep declares it dead';
is online('w1'), 5000, '  and marks 20,000 of its channels offline';
sweep();
is online('w1'), 0, 'the next sweep the other 5,000';
is owner('w1'), 'none', '  and its row goes once none is left';

# w2 is declared dead while some of its channels are still marked online,
# then beats again: it is told, and its row is alive again
is sql("SELECT pushjobs.owner_beat('w2')"), 'f', 'w2 begins';
sql("INSERT INTO pushjobs.presence (org, node_name, owner, session, online)
     SELECT 'demo', 'm' || g, 'w2', g, true FROM generate_series(1, 30000) g");
sql("UPDATE pushjobs.owners SET seen_at = now() - interval '1 minute' WHERE id = 'w2'");
sweep();
is online('w2'), 10000, 'w2 dead, 20,000 of its channels marked offline';

# a presence batch of the dead worker does not revive its row
sql(q{SELECT pushjobs.presence_update('w2', '[{"org":"demo","node":"m1","session":99,"online":true}]')});
is owner('w2'), 'true', 'a presence batch of a dead worker leaves it dead';

is sql("SELECT pushjobs.owner_beat('w2')"), 'f', 'its next beat: f (publish again)';
is owner('w2'), 'false', '  and it is alive again';
sweep();
is online('w2'), 10001, 'a sweep no longer marks its channels offline';
is sql("SELECT count(*) FROM pushjobs.online_nodes('demo', 20000)"), 10001,
    '  and they count as online';

# presence_update never creates an owner row
sql(q{SELECT pushjobs.presence_update('w3', '[{"org":"demo","node":"x1","session":1,"online":true}]')});
is owner('w3'), 'none', 'presence_update() writes no owner row';
is sql("SELECT count(*) FROM pushjobs.online_nodes('demo', 20000) WHERE node_name = 'x1'"), 0,
    '  so its channel counts once the worker has beaten';
sql("SELECT pushjobs.owner_beat('w3')");
is sql("SELECT count(*) FROM pushjobs.online_nodes('demo', 20000) WHERE node_name = 'x1'"), 1,
    '  which it now has';

# available_nodes(): what a new job counts on, of each node one row at
# most: online with a live owner, or offline while its handover (a reload)
# lasts.  Not online with a dead, overdue or missing owner, nor offline
# without a handover or after it.  create_job() makes those "new" and the
# others "unavailable" at once (sqitch change create_job_fast: one SELECT
# joined by the primary key, no longer a UNION of the org).
sql("SELECT pushjobs.owner_beat(w) FROM unnest(ARRAY['a1', 'a2', 'a3']) w");
sql("UPDATE pushjobs.owners SET dead = true WHERE id = 'a2'");
sql("UPDATE pushjobs.owners SET seen_at = now() - interval '1 minute'
      WHERE id = 'a3'");
sql("INSERT INTO pushjobs.presence (org, node_name, owner, session, online,
                                    handover_until)
     VALUES ('av', 'live', 'a1', 1, true, NULL),
            ('av', 'dead', 'a2', 2, true, NULL),
            ('av', 'overdue', 'a3', 3, true, NULL),
            ('av', 'orphan', 'gone', 4, true, NULL),
            ('av', 'handover', 'a1', 5, false, now() + interval '1 minute'),
            ('av', 'expired', 'a1', 6, false, now() - interval '1 second'),
            ('av', 'offline', 'a1', 7, false, NULL),
            ('other', 'elsewhere', 'a1', 8, true, NULL)");
is sql("SELECT string_agg(node_name, ' ' ORDER BY node_name)
          FROM pushjobs.available_nodes('av', 20000)"), 'handover live',
    'available: the node online with a live owner and the one handed over';
my @av = qw(live dead overdue orphan handover expired offline absent
            elsewhere);
my $body = '{"command": "true", "quorum": 2, "nodes": ['
           . join(', ', map { "\"$_\"" } @av) . ']}';
my $job = sql("SELECT pushjobs.create_job('av', 'u', '$body', 3600, 60000,
                                          20000)");
like $job, qr/^[0-9a-f]{32}$/, 'a job over them and two nodes without a row';
is sql("SELECT string_agg(node_name || '=' || status, ' '
                          ORDER BY node_name)
          FROM pushjobs.job_nodes WHERE job_id = '$job'"),
   'absent=unavailable dead=unavailable elsewhere=unavailable '
   . 'expired=unavailable handover=new live=new offline=unavailable '
   . 'orphan=unavailable overdue=unavailable',
   '  those two are new, the others unavailable at once';
is sql("SELECT count(*) FROM pushjobs.job_events
         WHERE job_id = '$job' AND name = 'quorum_vote'
           AND data::jsonb ->> 'status' = 'down'"), 7,
   '  with a "down" vote each';

$stack->stop;
done_testing;
