{{/* imgstream's alert rules, as Prometheus rule groups: rendered into the PrometheusRule, and
     checked by `make check-deploy` with promtool (check rules, and deploy/prometheus's unit
     tests). Every metric named here is in deploy/metrics.txt, which the tests hold to what the
     processes export. README "Operate it" says what each alert means and what to do. */}}
{{- define "imgstream.alertGroups" -}}
{{- $r := .Values.prometheusRule }}
groups:
  - name: imgstream.lag
    rules:
      - alert: ImgstreamGroupLagHigh
        expr: max by (group, topic, partition) (imgstream_group_lag_seconds) > {{ $r.lagSeconds }}
        for: {{ $r.lagFor }}
        labels:
          severity: {{ $r.severity }}
        annotations:
          summary: {{`'Group {{ $labels.group }} is {{ $value | humanizeDuration }} behind on {{ $labels.topic }} partition {{ $labels.partition }}'`}}
          description: {{ printf "The oldest record group {{ $labels.group }} has not committed on this partition has been waiting more than %vs for %s. Rising on every partition: consumers down or too few (scale out, up to the partition count). On one partition: its owner is stuck (its log says still waiting) or its keys are hot." (toString $r.lagSeconds) $r.lagFor | quote }}
      - alert: ImgstreamGroupLagUnknown
        expr: time() - max by (group, topic) (imgstream_group_lag_read_timestamp_seconds) > 60
        for: {{ $r.lagStaleFor }}
        labels:
          severity: {{ $r.severity }}
        annotations:
          summary: {{`'The lag of group {{ $labels.group }} has not been read for {{ $value | humanizeDuration }}'`}}
          description: "imgstream monitor could not read the group's offsets (its /readyz answers 503, its log says why): the brokers do not answer it, or its credentials lack Describe on the group. The lag figures are stale meanwhile."
  - name: imgstream.consumers
    rules:
      - alert: ImgstreamDeadLettersRising
        expr: sum by (code) (increase(imgstream_records_dead_lettered_total[5m])) > 0
        for: {{ $r.deadLettersFor }}
        labels:
          severity: {{ $r.severity }}
        annotations:
          summary: {{ printf "Records dead-lettered with code {{ $labels.code }} for %s" $r.deadLettersFor | quote }}
          description: {{ "{{ $value | humanize }} records refused with code {{ $labels.code }} in the last 5 minutes, and in every 5 minutes before for the alert's duration: not a one-off. List them with imgstream dlq ls --code {{ $labels.code }}; fix the producer or the limit, then imgstream dlq replay --code {{ $labels.code }}." | quote }}
      - alert: ImgstreamConsumerOutOfGroup
        expr: imgstream_consumer_out_of_group_seconds > {{ $r.outOfGroupSeconds }}
        labels:
          severity: {{ $r.severity }}
        annotations:
          summary: {{`'A consumer has been out of its group for {{ $value | humanizeDuration }}'`}}
          description: "This member owns no partition. While the brokers answer it exits at 90 s and its supervisor restarts it; while they do not, it is a Kafka outage and it waits. Firing for long: the brokers are down, or the pod is not being restarted."
      - alert: ImgstreamPartitionsLost
        expr: increase(imgstream_rebalances_total{kind="lost"}[15m]) > 0
        labels:
          severity: {{ $r.severity }}
        annotations:
          summary: "A consumer lost its partitions to its group"
          description: "The group threw a member out (its session timed out, or it stalled past max.poll.interval.ms) and another member took its partitions over; records it had not committed are stored again, once. Often: CPU throttling or a frozen service call; see the member's log around the time."
      - alert: ImgstreamServiceOutage
        expr: max by (service) (imgstream_outage_in_progress) == 1
        for: {{ $r.outageFor }}
        labels:
          severity: {{ $r.severity }}
        annotations:
          summary: {{`'{{ $labels.service }} is in an outage for imgstream'`}}
          description: {{`'Consumers cannot reach {{ $labels.service }} (their log says why, with the service''s own answer). Nothing is lost and nothing is committed past it: they retry until it answers, and lag grows meanwhile. Fix {{ $labels.service }}.'`}}
{{- end }}
