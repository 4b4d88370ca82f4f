"""DICOM networking: studies arrive over C-STORE (or STOW-RS) and results go back into PACS.

:mod:`.receiver`  C-STORE/C-ECHO SCP writing ``INBOX/<StudyInstanceUID>/<SOPInstanceUID>.dcm``
:mod:`.results`   the SR and Secondary Capture objects made from a result folder (highdicom)
:mod:`.outbox`    persistent store-and-forward queue of objects to send, with retries
:mod:`.service`   the receiver, the outbox and the watcher hook wired from a device profile
:mod:`.stow`      DICOMweb STOW-RS on the server, into the same inbox
:mod:`.command`   ``ctedge receive`` and ``ctedge bench-dicom`` (:mod:`.bench`, with :mod:`.orthanc`)
"""
