/*
 * The org's job list: …/pushy/jobs#token=TOKEN (an org link). Newest
 * first, each job linking to its page with the same token; new jobs and
 * their completion arrive from the org's event feed.
 */
'use strict';

(function () {
    var m = /^(.*\/organizations\/([^\/]+)\/pushy)\/jobs\/?$/.exec(
        location.pathname);
    if (!m) {
        PJ.showError('not a job list address');
        return;
    }
    var base = m[1], org = decodeURIComponent(m[2]);
    var rows = new Map();
    var $ = function (i) { return document.getElementById(i); };
    window.pushjobsPage = { stats: PJ.stats, rows: rows };

    document.getElementById('org').textContent = org;
    if (!PJ.token) {
        PJ.showError('this link has no token: ask for a link with GET '
                     + base + '/link');
        return;
    }

    function setCell(td, v) {
        td.textContent = v === undefined || v === null ? '' : String(v);
    }

    /* a row per job, inserted at the top when new */
    function upsert(j) {
        if (!/^[0-9a-f]{32}$/.test(j.id)) {
            return;
        }
        var r = rows.get(j.id);
        if (!r) {
            var tr = PJ.el('tr');
            tr.dataset.job = j.id;
            r = { tr: tr, created: PJ.el('td'), status: PJ.el('td'),
                  command: PJ.el('td', 'mono'), user: PJ.el('td'),
                  link: PJ.el('td', 'mono') };
            var a = PJ.el('a', null, j.id);
            a.href = base + '/jobs/' + j.id + '#token='
                     + encodeURIComponent(PJ.token);
            a.rel = 'noreferrer';
            r.link.appendChild(a);
            [r.created, r.status, r.command, r.user, r.link].forEach(
                function (td) { tr.appendChild(td); });
            rows.set(j.id, r);
            var tb = $('jobs');
            tb.insertBefore(tr, tb.firstChild);
        }
        if ('created_at' in j) {
            setCell(r.created, j.created_at);
        }
        if ('command' in j) {
            setCell(r.command, j.command);
        }
        if ('user' in j) {
            setCell(r.user, j.user);
        }
        if ('status' in j) {
            setCell(r.status, j.status);
            r.status.className = 'badge j-'
                                 + String(j.status).replace(/[^a-z_]/g, '');
        }
    }

    function load() {
        return PJ.getJSON(base + '/jobs').then(function (list) {
            /* oldest first from the server: the newest ends on top */
            (Array.isArray(list) ? list : []).forEach(upsert);
            $('main').hidden = false;
        });
    }

    PJ.feed(base + '/job_status_feed', {
        onOpen: load,
        onEvent: function (name, d) {
            if (name === 'start') {
                upsert({ id: d.job, command: d.command, user: d.user,
                         status: 'voting', created_at: d.timestamp });
            } else if (name === 'job_complete') {
                upsert({ id: d.job, status: d.status });
            }
        },
        done: function () { return false; },
        onError: function (err) {
            PJ.showError('This link cannot show the jobs: ' + err.message);
        }
    });
})();
